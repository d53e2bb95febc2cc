// PROTOCOL.md's retry rule, written once for the app: 0.5 s doubling to 30 s, each pause jittered to 0.5-1.5
// times the step (device_agents/client.py's _call). The client retries a call with it; the loop waits out an
// outage of any length with it (issue 21, item 12: the Python agent survives outages, the app now too).
import Foundation

struct Backoff: Sendable {
    private(set) var step: TimeInterval
    let cap: TimeInterval

    init(first: TimeInterval = 0.5, cap: TimeInterval = 30) {
        step = first
        self.cap = cap
    }

    /// The next pause for `random` in 0..<1, and the step doubled (capped) for the one after.
    mutating func next(random: Double) -> TimeInterval {
        let pause = step * (0.5 + random)
        step = min(step * 2, cap)
        return pause
    }
}
