// The same loop as device_agents/loop.py: fingerprint, lease, download + verify, measure with heartbeats, report.
import Foundation
import UIKit

@MainActor
final class AgentLoop: ObservableObject {
    @Published var status = "stopped"
    @Published var done = 0
    @Published var failed = 0
    @Published var lastOp = ""
    private var task: Task<Void, Never>?

    var running: Bool { task != nil }

    func start(server: URL, token: String) {
        guard task == nil else { return }
        UIApplication.shared.isIdleTimerDisabled = true  // a sleeping phone measures nothing
        let client = AgentClient(server: server, token: token)
        task = Task { await self.run(client) }
    }

    /// Finishes the current job, then stops (the protocol's first SIGTERM).
    func stop() {
        task?.cancel()
    }

    private func run(_ client: AgentClient) async {
        defer {
            task = nil
            status = "stopped"
            UIApplication.shared.isIdleTimerDisabled = false
        }
        do {
            try await client.reportFingerprint(Self.fingerprint())
            status = "waiting for jobs"
            while !Task.isCancelled {
                guard let job = try await client.lease(waitSeconds: 20) else { continue }
                await runJob(job, client)
            }
        } catch {
            status = "error: \(error.localizedDescription)"
        }
    }

    private func runJob(_ job: LeasedJob, _ client: AgentClient) async {
        lastOp = job.op_key
        status = "measuring job \(job.job_id)"
        let beat = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(job.lease_seconds / 3 * 1e9))
                if Task.isCancelled { break }
                try? await client.heartbeat(job)
            }
        }
        defer { beat.cancel() }
        do {
            let model = try await client.downloadModel(job)
            let (stats, context) = try await Task.detached(priority: .userInitiated) {
                try measure(model: model, inputShape: job.input_shape, config: job.config)
            }.value
            let body = ResultBody(lease_token: job.lease_token, median_us: stats.median, mean_us: stats.mean,
                                  p10_us: stats.p10, p90_us: stats.p90, std_us: stats.std, n: stats.n,
                                  context: context)
            _ = try await client.result(job, body)
            done += 1
        } catch ProtocolError.refused(let code, let detail) where code == 409 {
            status = "lease lost: \(detail)"  // re-leased elsewhere: drop the result
        } catch {
            failed += 1
            try? await client.failure(job, reason: error.localizedDescription)
        }
        status = "waiting for jobs"
    }

    static func fingerprint() -> Fingerprint {
        var systemInfo = utsname()
        uname(&systemInfo)
        let machine = withUnsafePointer(to: &systemInfo.machine) {
            $0.withMemoryRebound(to: CChar.self, capacity: 1) { String(cString: $0) }
        }
        return Fingerprint(model: machine,  // e.g. iPhone15,2
                           soc: nil,
                           os: "iOS \(UIDevice.current.systemVersion)",
                           runtime: "onnxruntime-objc",
                           runtime_version: ORTVersionString(),
                           cores: ProcessInfo.processInfo.activeProcessorCount,
                           extra: ["name": UIDevice.current.name])
    }
}
