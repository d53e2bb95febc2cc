// The same loop as device_agents/loop.py, protocol 2: fingerprint, lease a batch, download + verify, measure
// in interleaved rounds with heartbeats, report every result in one call.
//
// Stopping never cancels the task that posts results (a cancelled task's POST and retry sleep would fail, and
// a measured batch would be lost while its lease ran out):
// - "Stop after this batch" sets a flag the loop reads between batches; the batch in hand is reported.
// - "Stop now", going to the background, or a heartbeat answered 409 set a reason the measurement polls
//   between visits; the batch is then given back (failure reports, so the service requeues it at once), except
//   after a 409, when nothing is ours any more and the results are discarded.
import Foundation
import UIKit

@MainActor
final class AgentLoop: ObservableObject {
    @Published var status = "stopped"
    @Published var done = 0
    @Published var failed = 0
    @Published var lastBatch = ""
    @Published var stopAfterBatch = false
    private var task: Task<Void, Never>?
    private let giveUp = GiveUpFlag()

    var running: Bool { task != nil }

    func start(server: URL, token: String, options: MeasureOptions) {
        guard task == nil else { return }
        stopAfterBatch = false
        giveUp.clear()
        UIApplication.shared.isIdleTimerDisabled = true  // a sleeping phone measures nothing
        let client = AgentClient(server: server, token: token)
        task = Task { await self.run(client, options: options) }
    }

    /// The protocol's first SIGTERM: finish and report the current batch, then stop.
    func stopAfterThisBatch() { stopAfterBatch = true }

    /// The second SIGTERM: give the current batch back now.
    func stopNow(_ why: String = "stopped from the app; batch given back") {
        stopAfterBatch = true
        giveUp.set(why)
    }

    /// iOS suspends background apps: give the batch back rather than hold a lease we cannot keep.
    func enteredBackground() {
        guard running else { return }
        giveUp.set("the app went to the background; batch given back")
    }

    func enteredForeground() {
        if running, !stopAfterBatch { giveUp.clear() }  // a new batch may start
    }

    private func run(_ client: AgentClient, options: MeasureOptions) async {
        defer {
            task = nil
            status = "stopped"
            UIApplication.shared.isIdleTimerDisabled = false
        }
        do {
            try await client.reportFingerprint(Self.fingerprint())
            while !stopAfterBatch {
                status = "waiting for jobs"
                guard let batch = try await client.leaseBatch(waitSeconds: 20, maxJobs: 500) else { continue }
                await runBatch(batch, client, options: options)
            }
        } catch {
            status = "error: \(error.localizedDescription)"
        }
    }

    private func runBatch(_ batch: Batch, _ client: AgentClient, options: MeasureOptions) async {
        lastBatch = "\(batch.jobs.count) jobs (\(batch.batch_group ?? "batch"))"
        status = "downloading \(batch.jobs.count) models"
        let flag = giveUp
        let every = batch.lease_seconds / 3
        let beat = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(every * 1e9))
                if Task.isCancelled { break }
                do {
                    try await client.heartbeat(leaseToken: batch.lease_token, retryFor: every)
                } catch ProtocolError.refused(409, _) {
                    flag.set("lease lost (409): the jobs were re-leased or finished; results discarded", lost: true)
                    break
                } catch {
                    continue  // transient: the next beat may get through before the lease runs out
                }
            }
        }
        defer { beat.cancel() }

        if let why = precisionRefusal(batch.config.precisionName, options: options) {
            status = why
            for job in batch.jobs {
                failed += 1
                try? await client.failure(job, reason: why)
            }
            return
        }
        var failures: [Int: String] = [:]
        var models: [BatchModel] = []
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("dnas-models")
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for job in batch.jobs {
            let path = folder.appendingPathComponent("\(job.model_sha256).onnx")
            do {
                if !FileManager.default.fileExists(atPath: path.path) {  // cached by checksum
                    try await client.downloadModel(job).write(to: path, options: .atomic)
                }
                models.append(BatchModel(key: String(job.job_id), path: path, inputShape: job.input_shape))
            } catch {
                failures[job.job_id] = error.localizedDescription  // a corrupt download is never measured
            }
        }

        status = "measuring \(models.count) models"
        let config = batch.config, seed = batch.seed
        let measured = await Task.detached(priority: .userInitiated) { () -> Result<([String: BatchOutcome], [String: JSONValue]), Error> in
            Result {
                try measureBatch(models, config: config, seed: seed, options: options,
                                 progress: { r, total in Task { @MainActor in self.status = "round \(r)/\(total)" } },
                                 shouldStop: { flag.reason })
            }
        }.value
        beat.cancel()

        if flag.lost {  // nothing is ours any more: report nothing
            status = "lease lost"
            return
        }
        let jobs = Dictionary(uniqueKeysWithValues: batch.jobs.map { ($0.job_id, $0) })
        switch measured {
        case .failure(let error):
            if case .stopped(let why)? = error as? MeasureError {
                await giveBack(batch.jobs, why, client)
                return
            }
            for job in batch.jobs where failures[job.job_id] == nil { failures[job.job_id] = error.localizedDescription }
        case .success(let (outcomes, context)):
            var results: [BatchResult] = []
            for (key, outcome) in outcomes {
                guard let id = Int(key) else { continue }
                switch outcome {
                case .failed(let why): failures[id] = why
                case .measured(let s):
                    results.append(BatchResult(job_id: id, median_us: s.median, mean_us: s.mean, p10_us: s.p10,
                                               p90_us: s.p90, std_us: s.std, n: s.n, rounds: s.roundMedians.count,
                                               round_medians_us: s.roundMedians, estimator: Rounds.estimator,
                                               context: context))
                }
            }
            if !results.isEmpty {
                do {
                    let acks = try await client.results(leaseToken: batch.lease_token, results)
                    done += acks.filter { $0.status == "done" }.count
                } catch {
                    status = "results refused: \(error.localizedDescription)"
                }
            }
        }
        for (id, reason) in failures {
            failed += 1
            if let job = jobs[id] { try? await client.failure(job, reason: reason) }
        }
    }

    private func giveBack(_ jobs: [BatchJob], _ why: String, _ client: AgentClient) async {
        status = why
        // iOS gives a backgrounded app a little time to finish: enough to hand the leases back.
        let background = UIApplication.shared.beginBackgroundTask(withName: "give jobs back")
        for job in jobs { try? await client.failure(job, reason: why) }
        UIApplication.shared.endBackgroundTask(background)
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
                           runtime_version: ortVersionString(),
                           cores: ProcessInfo.processInfo.activeProcessorCount,
                           extra: ["name": UIDevice.current.name, "protocol": "2"])
    }
}

/// Why the measurement must stop, shared between the main actor, the heartbeat and the measuring thread.
final class GiveUpFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var why: String?
    private var leaseLost = false

    var reason: String? { lock.lock(); defer { lock.unlock() }; return why }
    var lost: Bool { lock.lock(); defer { lock.unlock() }; return leaseLost }

    func set(_ reason: String, lost: Bool = false) {
        lock.lock(); defer { lock.unlock() }
        if why == nil { why = reason }
        leaseLost = leaseLost || lost
    }

    func clear() {
        lock.lock(); defer { lock.unlock() }
        why = nil
        leaseLost = false
    }
}
