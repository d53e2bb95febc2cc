// The same loop as device_agents/loop.py, protocol 2: fingerprint, lease a batch, download + verify, measure
// in interleaved rounds with heartbeats, report every result in one call.
//
// Stopping never cancels the task that posts results (a cancelled task's POST and retry sleep would fail, and
// a measured batch would be lost while its lease ran out):
// - "Stop after this batch" sets a flag the loop reads between batches; the batch in hand is reported.
// - "Stop now" or going to the background set a reason the measurement polls between visits; the batch is then
//   given back (failure reports, so the service requeues it at once). Going to the background begins a
//   background task at once, so iOS lets the visit in hand finish and the give-back go out.
// - A heartbeat answered 409 marks that batch's lease lost for good: its results are discarded, whatever
//   happens to the app meanwhile.
// - A finished batch is saved (ResultStore) before it is posted, inside a background task, and removed once
//   the service has answered; a batch saved by an app that was killed is posted at the next start.
// - An unreachable service is waited out however long it lasts, as the Python agent does; only a refusal
//   (401, 403: the token or the device) stops the loop.
import Foundation
import UIKit

@MainActor
final class AgentLoop: ObservableObject {
    @Published var status = "stopped"
    @Published var done = 0
    @Published var failed = 0
    @Published var lastBatch = ""
    @Published var savedBatches = 0
    @Published var stopAfterBatch = false
    private var task: Task<Void, Never>?
    private var pause: Task<Void, Never>?  // the wait between attempts while the service is away; cut short by stops
    private var backgroundGrace: BackgroundActivity?  // from entering the background until the batch is given back
    private let stop = StopSignal()
    private let store: ResultStore

    init(store: ResultStore = ResultStore(directory: AgentLoop.storeDirectory)) {
        self.store = store
        savedBatches = store.pending().count
    }

    /// Application Support: kept across launches, not shown to the user, not purged like caches.
    nonisolated static var storeDirectory: URL {
        let base = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask).first
            ?? FileManager.default.temporaryDirectory
        return base.appendingPathComponent("dnas-finished-batches", isDirectory: true)
    }

    var running: Bool { task != nil }

    func start(server: ServerURL, token: String, options: MeasureOptions) {
        guard task == nil else { return }
        stopAfterBatch = false
        stop.clear()
        UIApplication.shared.isIdleTimerDisabled = true  // a sleeping phone measures nothing
        let client = AgentClient(server: server, token: token)
        task = Task { await self.run(client, options: options) }
    }

    /// At launch: post what an earlier run of the app saved and could not post (it may have been killed).
    func deliverSaved(server: ServerURL, token: String) {
        guard task == nil, savedBatches > 0 else { return }
        let client = AgentClient(server: server, token: token)
        task = Task {
            await self.deliverSaved(client)
            self.task = nil
        }
    }

    /// The protocol's first SIGTERM: finish and report the current batch, then stop.
    func stopAfterThisBatch() {
        stopAfterBatch = true
        pause?.cancel()
    }

    /// The second SIGTERM: give the current batch back now.
    func stopNow(_ why: String = "stopped from the app; batch given back") {
        stopAfterBatch = true
        stop.stopNow(why)
        pause?.cancel()
    }

    /// iOS suspends background apps: give the batch back rather than hold a lease we cannot keep. The background
    /// task begins here, before the visit in hand ends, so the app is not suspended before it can give back.
    func enteredBackground() {
        guard running else { return }
        if backgroundGrace?.active != true { backgroundGrace = BackgroundActivity("give the batch back") }
        stop.enteredBackground()
    }

    /// Back in front: the loop goes on with the next batch. The batch in hand, if any, is still given back (it
    /// may have been suspended), and a lost lease stays lost (LeaseState is per batch, never cleared).
    func enteredForeground() {
        stop.enteredForeground()
        backgroundGrace?.end()
        pause?.cancel()
    }

    private func run(_ client: AgentClient, options: MeasureOptions) async {
        defer {
            task = nil
            status = "stopped"
            UIApplication.shared.isIdleTimerDisabled = false
            backgroundGrace?.end()
        }
        var fingerprinted = false
        var unreachableSince: Date?
        while !stopAfterBatch {
            if stop.inBackground {  // nothing in hand: let iOS suspend the app until it is in front again
                backgroundGrace?.end()
                status = "paused in the background"
                await pauseFor(seconds: 3600)
                continue
            }
            do {
                if !fingerprinted {
                    try await client.reportFingerprint(Self.fingerprint())
                    fingerprinted = true
                }
                await deliverSaved(client)
                status = unreachableSince == nil ? "waiting for jobs" : status
                let batch = try await client.leaseBatch(waitSeconds: 20, maxJobs: 500, retryFor: 60)
                unreachableSince = nil
                if let batch { await runBatch(batch, client, options: options) }
            } catch ProtocolError.transient(let why) {
                // The service or network is away: an agent outlives an outage of any length (loop.py waits
                // min(30, max(1, wait_seconds)) between its 600 s retry periods; this one reports every minute).
                let since = unreachableSince ?? Date()
                unreachableSince = since
                let clock = since.formatted(date: .omitted, time: .shortened)
                status = "service unreachable since \(clock) (\(why)); retrying"
                await pauseFor(seconds: 20)
            } catch {
                // Refused (401, 403: the token or the device): retrying cannot help.
                status = "stopped: \(error.localizedDescription)"
                return
            }
        }
    }

    /// Waits `seconds`, or less if the app is stopped or comes back to the foreground.
    private func pauseFor(seconds: Double) async {
        let sleeper = Task { _ = try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9)) }
        pause = sleeper
        await sleeper.value
        pause = nil
    }

    private func deliverSaved(_ client: AgentClient) async {
        for (url, batch) in store.pending() where batch.server == client.server.description {
            status = "posting a saved batch (\(batch.finished.results.count) results)"
            let activity = BackgroundActivity("post saved results")
            let delivery = await deliver(batch.finished, with: client)
            record(delivery, saved: url)
            activity.end()
            if case .retryLater = delivery { break }
        }
    }

    private func record(_ delivery: Delivery, saved url: URL?) {
        switch delivery {
        case .delivered(let stored, let failures):
            done += stored
            failed += failures
            if let url { store.remove(url) }
        case .dropped(let why):
            status = why
            if let url { store.remove(url) }
        case .retryLater(let why):
            status = "results saved, posted when the service answers: \(why)"
        }
        savedBatches = store.pending().count
    }

    private func runBatch(_ batch: Batch, _ client: AgentClient, options: MeasureOptions) async {
        lastBatch = "\(batch.jobs.count) jobs (\(batch.batch_group ?? "batch"))"
        status = "downloading \(batch.jobs.count) models"
        let lease = LeaseState()  // this batch's, new each time: a 409 cannot be forgotten
        let stop = self.stop
        let since = stop.backgroundings  // any backgrounding from now on gives this batch back
        let every = batch.lease_seconds / 3
        let token = batch.lease_token
        let beat = Task.detached {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(every * 1e9))
                if Task.isCancelled { break }
                do {
                    try await client.heartbeat(leaseToken: token, within: 0.8 * every)
                } catch ProtocolError.refused(409, _) {
                    lease.markLost()
                    break
                } catch {
                    continue  // transient, or anything else: the next beat may get through before the lease runs out
                }
            }
        }
        defer { beat.cancel() }

        var failures: [String: String] = [:]
        if let why = precisionRefusal(batch.config.precisionName, options: options) {
            status = why
            for job in batch.jobs { failures[String(job.job_id)] = why }
            await report(batch, results: [], failures: failures, client)
            return
        }
        var models: [BatchModel] = []
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("dnas-models")
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for job in batch.jobs {
            if let why = stop.reason(since: since) {
                await giveBack(batch.jobs, why, client)
                return
            }
            let path = folder.appendingPathComponent("\(job.model_sha256).onnx")
            do {
                let cached = (try? Data(contentsOf: path)).flatMap { try? verifiedModel($0, for: job) }
                if cached == nil {  // cached by checksum, and checked again: a cut-off write is fetched anew
                    try verifiedModel(try await client.downloadModel(job), for: job).write(to: path, options: .atomic)
                }
                models.append(BatchModel(key: String(job.job_id), path: path, inputShape: job.input_shape))
            } catch {
                failures[String(job.job_id)] = error.localizedDescription  // corrupt or foreign: never measured
            }
        }

        status = "measuring \(models.count) models"
        let config = batch.config, seed = batch.seed
        let toMeasure = models  // a `let` copy: a captured `var` is a data race (an error in Swift 6 mode)
        let measured = await Task.detached(priority: .userInitiated) {
            () -> Result<([String: BatchOutcome], [String: JSONValue]), any Error> in
            Result {
                try measureBatch(toMeasure, config: config, seed: seed, options: options,
                                 progress: { r, total in Task { @MainActor in self.status = "round \(r)/\(total)" } },
                                 shouldStop: { lease.lost ? "lease lost (409)" : stop.reason(since: since) })
            }
        }.value
        beat.cancel()

        if lease.lost {  // nothing is ours any more: report nothing, save nothing
            status = "lease lost (409): the jobs were re-leased or finished; results discarded"
            return
        }
        var results: [BatchResult] = []
        switch measured {
        case .failure(let error):
            if case .stopped(let why)? = error as? MeasureError {
                await giveBack(batch.jobs, why, client)
                return
            }
            for job in batch.jobs where failures[String(job.job_id)] == nil {
                failures[String(job.job_id)] = error.localizedDescription
            }
        case .success(let (outcomes, context)):
            for (key, outcome) in outcomes {
                guard let id = Int(key) else { continue }
                switch outcome {
                case .failed(let why): failures[key] = why
                case .measured(let s):
                    results.append(BatchResult(job_id: id, median_us: s.median, mean_us: s.mean, p10_us: s.p10,
                                               p90_us: s.p90, std_us: s.std, n: s.n, rounds: s.roundMedians.count,
                                               round_medians_us: s.roundMedians, estimator: Rounds.estimator,
                                               context: context))
                }
            }
        }
        await report(batch, results: results, failures: failures, client)
    }

    /// Saves the finished batch, then posts it, both inside a background task begun first: a suspend then a kill
    /// at any point leaves the saved copy, posted at the next start.
    private func report(_ batch: Batch, results: [BatchResult], failures: [String: String],
                        _ client: AgentClient) async
    {
        let activity = BackgroundActivity("post results")
        defer { activity.end() }
        let finished = FinishedBatch(lease_token: batch.lease_token, jobs: batch.jobs, results: results,
                                     failures: failures, finished_at: Date())
        let saved = try? store.save(SavedBatch(server: client.server.description, finished: finished))
        status = "reporting \(results.count) results"
        record(await deliver(finished, with: client), saved: saved)
    }

    private func giveBack(_ jobs: [BatchJob], _ why: String, _ client: AgentClient) async {
        status = why
        let activity = BackgroundActivity("give the batch back")  // as well as the grace begun on backgrounding
        defer {
            activity.end()
            if stop.inBackground { backgroundGrace?.end() }
        }
        for job in jobs {
            do { try await client.failure(job, reason: why) } catch ProtocolError.transient { break } catch { continue }
        }
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
