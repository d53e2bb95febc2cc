"""Android phones (and Linux boards) over adb, via the `adb-shell` package: no host adb server needed."""
