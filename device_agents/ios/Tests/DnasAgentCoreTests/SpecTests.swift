// The core against the cases in spec/, the same files tests/test_ios_specs.py checks the Python agent and
// rounds.py against. `swift test` in device_agents/ios runs them (macOS, or Linux with a Swift 6 toolchain).
import Foundation
import XCTest

@testable import DnasAgentCore

private let specDir = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("spec")

private func spec<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
    try JSONDecoder().decode(T.self, from: Data(contentsOf: specDir.appendingPathComponent(name)))
}

private struct URLCases: Decodable {
    struct Case: Decodable { let server: String; let path: String; let expect: String? }
    let cases: [Case]
}

private struct OrderCases: Decodable {
    struct Case: Decodable { let models: Int; let rounds: Int; let seed: UInt64; let orders: [[Int]] }
    let cases: [Case]
}

private struct PostingTable: Decodable {
    let batch_post: [String: String]
    let item_post: [String: String]
}

private func answer(_ key: String) -> (any Error)? {
    if key == "200" { return nil }
    if key == "transient" { return ProtocolError.transient("network") }
    return ProtocolError.refused(Int(key)!, "detail")
}

final class SpecTests: XCTestCase {
    func testURLResolutionFollowsTheSpec() throws {
        for c in try spec("url_resolution.json", as: URLCases.self).cases {
            let server = try ServerURL(c.server)
            if let expected = c.expect {
                XCTAssertEqual(try server.resolve(c.path).absoluteString, expected, "\(c.server) + \(c.path)")
            } else {
                XCTAssertThrowsError(try server.resolve(c.path), "\(c.server) + \(c.path) must be refused")
            }
        }
    }

    func testVisitOrdersAreRoundsPys() throws {
        XCTAssertTrue(Rounds.selfCheck())
        for c in try spec("visit_orders.json", as: OrderCases.self).cases {
            XCTAssertEqual(Rounds.visitOrders(models: c.models, rounds: c.rounds, seed: c.seed), c.orders,
                           "models \(c.models), seed \(c.seed)")
        }
    }

    func testReportingDecisionsFollowTheSpec() throws {
        let table = try spec("result_posting.json", as: PostingTable.self)
        for (key, action) in table.batch_post {
            XCTAssertEqual(afterBatchPost(answer(key)).rawValue, action, "batch POST answered \(key)")
        }
        for (key, action) in table.item_post {
            XCTAssertEqual(afterItemPost(answer(key)).rawValue, action, "result POST answered \(key)")
        }
    }

    func testAFinishedBatchSurvivesInTheStoreUntilRemoved() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dnas-store-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = ResultStore(directory: dir)
        let job = BatchJob(job_id: 7, lease_token: "token-0123", attempt: 1, op_key: "k", model_url: "/v1/m",
                           model_sha256: "ab", model_bytes: 1, input_shape: [1, 3, 8, 8])
        let result = BatchResult(job_id: 7, median_us: 2, mean_us: 2, p10_us: 1, p90_us: 3, std_us: 1, n: 6,
                                 rounds: 3, round_medians_us: [1, 2, 3], estimator: Rounds.estimator,
                                 context: ["thermal_state_before": .string("fair")])
        let finished = FinishedBatch(lease_token: "token-0123", jobs: [job], results: [result], failures: [:],
                                     finished_at: Date())
        let url = try store.save(SavedBatch(server: "http://h:8321/dnas", finished: finished))
        let again = ResultStore(directory: dir).pending()  // as the next start of the app reads it
        XCTAssertEqual(again.count, 1)
        XCTAssertEqual(again.first?.batch.finished.results.first?.round_medians_us, [1, 2, 3])
        XCTAssertEqual(again.first?.batch.server, "http://h:8321/dnas")
        store.remove(url)
        XCTAssertTrue(store.pending().isEmpty)
    }

    func testBackoffDoublesToItsCap() {
        var backoff = Backoff()
        let steps = (0..<9).map { _ in backoff.next(random: 0.5) }  // random 0.5: the pause is the step itself
        XCTAssertEqual(steps, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
    }
}
