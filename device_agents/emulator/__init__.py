"""An ADB device emulator: the device side of the ADB protocol over TCP, for tests and demos where no phone
or adbd can run. Commands execute on this host inside a sandbox folder that stands in for the device's
file system. Faithful enough that Debian's `adb` client and the `adb-shell` package both drive it."""
