// A measured batch is saved before it is posted, and removed only once the service has answered every part of
// it. iOS may suspend the app and then kill it at any time in the background; the next start posts what a
// killed app had saved (issue 21, item 11). Results the lease lost (409) are never saved: they are not ours.
import Foundation

/// Everything needed to report a finished batch later: each job's token for the per-job fallback and the
/// failure reports, the results, and the jobs that failed with their reasons.
struct FinishedBatch: Codable, Sendable {
    let lease_token: String
    let jobs: [BatchJob]
    let results: [BatchResult]
    let failures: [String: String]  // job id -> reason (JSON object keys are strings)
    let finished_at: Date
}

/// A finished batch on disk, with the server it came from: it is posted to that server only (the job ids and
/// lease tokens mean nothing to another).
struct SavedBatch: Codable, Sendable {
    let server: String  // ServerURL.description
    let finished: FinishedBatch
}

struct ResultStore: Sendable {
    let directory: URL

    /// Written whole or not at all (atomic rename), so a kill mid-write leaves no half file.
    @discardableResult
    func save(_ batch: SavedBatch) throws -> URL {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let millis = Int(batch.finished.finished_at.timeIntervalSince1970 * 1000)
        let url = directory.appendingPathComponent("batch-\(millis)-\(UUID().uuidString).json")
        try JSONEncoder().encode(batch).write(to: url, options: .atomic)
        return url
    }

    /// Saved batches, oldest first. A file that no longer decodes (an older app's format) is renamed aside, not
    /// retried at every start.
    func pending() -> [(url: URL, batch: SavedBatch)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var out: [(url: URL, batch: SavedBatch)] = []
        for name in names.sorted() where name.hasPrefix("batch-") && name.hasSuffix(".json") {
            let url = directory.appendingPathComponent(name)
            guard let data = try? Data(contentsOf: url) else { continue }
            if let batch = try? JSONDecoder().decode(SavedBatch.self, from: data) {
                out.append((url, batch))
            } else {
                try? FileManager.default.moveItem(at: url, to: url.appendingPathExtension("unreadable"))
            }
        }
        return out.sorted { $0.batch.finished.finished_at < $1.batch.finished.finished_at }
    }

    func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }
}
