// Reporting a finished batch (PROTOCOL.md steps 6 and 7), as the Python agent's _report does:
// - the failures first, so a refused results POST cannot leave them leased;
// - then every result in one POST; if the service refuses it whole (422: one item breaks the schema), each
//   result goes on its own through protocol 1's `POST /v1/agent/jobs/{id}/result`, so only the bad one fails,
//   and that one is reported failed with the service's reason (issue 21, item 10);
// - any other refusal (409: the lease is no longer ours; 401/403) drops the batch: retrying cannot help;
// - an unreachable service keeps the saved batch for a later attempt (the Python agent, with nothing saved,
//   loses it).
// The decisions are two small functions so that spec/result_posting.json can hold them; tests/test_ios_specs.py
// checks the Python agent against the same table.
import Foundation

enum BatchPostAction: String, Sendable {
    case countAcks = "count_acks"
    case postEachOnItsOwn = "post_each_on_its_own"
    case drop
    case keepForLater = "keep_for_later"
}

enum ItemPostAction: String, Sendable {
    case countAck = "count_ack"
    case reportFailure = "report_failure"
    case keepForLater = "keep_for_later"
}

/// What to do after the batch's results POST answered `error` (nil: 200 with acks).
func afterBatchPost(_ error: (any Error)?) -> BatchPostAction {
    guard let error else { return .countAcks }
    guard case .refused(let code, _)? = error as? ProtocolError else { return .keepForLater }
    return code == 422 ? .postEachOnItsOwn : .drop
}

/// What to do after one result's own POST (the 422 fallback) answered `error` (nil: 200 with its ack).
func afterItemPost(_ error: (any Error)?) -> ItemPostAction {
    guard let error else { return .countAck }
    guard case .refused? = error as? ProtocolError else { return .keepForLater }
    return .reportFailure
}

enum Delivery: Sendable, Equatable {
    case delivered(done: Int, failed: Int)  // every part answered: remove the saved copy
    case dropped(String)  // refused whole (not 422): remove the saved copy, show why
    case retryLater(String)  // the service is unreachable: keep the saved copy
}

/// Posts a finished batch, failures first, with the per-job fallback on a whole-batch 422.
func deliver(_ batch: FinishedBatch, with client: AgentClient) async -> Delivery {
    let jobs = Dictionary(batch.jobs.map { ($0.job_id, $0) }, uniquingKeysWith: { first, _ in first })
    var failed = 0
    for (key, reason) in batch.failures.sorted(by: { $0.key < $1.key }) {
        guard let id = Int(key), let job = jobs[id] else { continue }
        do {
            try await client.failure(job, reason: reason)
            failed += 1
        } catch ProtocolError.refused {
            continue  // a stale token (already reported by an earlier attempt, or re-leased): not ours
        } catch {
            return .retryLater("failure report: \(error.localizedDescription)")
        }
    }
    guard !batch.results.isEmpty else { return .delivered(done: 0, failed: failed) }

    var acks: [Ack] = []
    var batchError: (any Error)?
    do { acks = try await client.results(leaseToken: batch.lease_token, batch.results) } catch { batchError = error }
    switch afterBatchPost(batchError) {
    case .countAcks:
        break
    case .drop:
        return .dropped("results refused: \(batchError?.localizedDescription ?? "")")
    case .keepForLater:
        return .retryLater("results not delivered: \(batchError?.localizedDescription ?? "")")
    case .postEachOnItsOwn:
        for result in batch.results {
            guard let job = jobs[result.job_id] else { continue }
            var itemError: (any Error)?
            do { acks.append(try await client.result(job, result)) } catch { itemError = error }
            switch afterItemPost(itemError) {
            case .countAck:
                break
            case .reportFailure:
                var detail = itemError?.localizedDescription ?? ""
                if case .refused(_, let d)? = itemError as? ProtocolError { detail = d }
                try? await client.failure(job, reason: "result refused by the service: \(detail.prefix(500))")
                failed += 1
            case .keepForLater:
                return .retryLater("result of job \(job.job_id) not delivered: \(itemError?.localizedDescription ?? "")")
            }
        }
    }
    return .delivered(done: acks.filter { $0.status == "done" }.count, failed: failed)
}
