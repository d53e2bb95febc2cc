// What iOS needs from an app that must finish something after it leaves the foreground, and the two signals the
// measuring thread polls. UIKit and `os` only: the rest of the app's logic is in DnasAgentCore/.
import Foundation
import os
import UIKit

/// A span of work iOS lets run on after the app leaves the foreground (`beginBackgroundTask`), ended exactly
/// once: by the work when it is done, or by iOS's expiration handler (an app still holding it then is killed).
/// Begun *before* the work can be interrupted: posting results, and the moment the app enters the background
/// (not after the visit in hand, which can outlast the few seconds iOS gives a suspended app).
@MainActor
final class BackgroundActivity {
    private var id: UIBackgroundTaskIdentifier = .invalid

    init(_ name: String) {
        id = UIApplication.shared.beginBackgroundTask(withName: name) { [weak self] in
            // Called on the main thread (UIKit's documentation; the iOS 18 SDK types the handler @MainActor).
            MainActor.assumeIsolated { self?.end() }
        }
    }

    var active: Bool { id != .invalid }

    func end() {
        guard id != .invalid else { return }
        UIApplication.shared.endBackgroundTask(id)
        id = .invalid
    }
}

/// Why the batch in hand must be given back now, read by the measuring thread between visits: "Stop now", or
/// the app has been in the background at any moment since the batch began. Returning to the foreground does
/// not undo the latter: the app may have been suspended meanwhile (a visit timed across a suspension, heartbeats
/// missed), so that batch goes back; the next one is measured in front.
final class StopSignal: Sendable {
    static let backgroundReason = "the app went to the background; batch given back"

    private struct State: Sendable {
        var stopNow: String?
        var inBackground = false
        var backgroundings = 0  // times the app entered the background
    }

    private let state = OSAllocatedUnfairLock(initialState: State())

    var inBackground: Bool { state.withLock { $0.inBackground } }

    /// A batch notes this when it begins and asks `reason(since:)` from then on.
    var backgroundings: Int { state.withLock { $0.backgroundings } }

    func reason(since backgroundings: Int) -> String? {
        state.withLock { s in
            if let why = s.stopNow { return why }
            return s.inBackground || s.backgroundings != backgroundings ? Self.backgroundReason : nil
        }
    }

    func stopNow(_ why: String) {
        state.withLock { $0.stopNow = why }
    }

    func enteredBackground() {
        state.withLock { s in
            s.inBackground = true
            s.backgroundings += 1
        }
    }

    func enteredForeground() {
        state.withLock { $0.inBackground = false }
    }

    func clear() {
        state.withLock { $0 = State() }
    }
}

/// One batch's lease. Lost for good once a heartbeat is answered 409: a new object per batch, never cleared, so
/// nothing (returning to the foreground included) can make the app post results that are no longer its own.
final class LeaseState: Sendable {
    private let lostFlag = OSAllocatedUnfairLock(initialState: false)

    var lost: Bool { lostFlag.withLock { $0 } }

    func markLost() {
        lostFlag.withLock { $0 = true }
    }
}
