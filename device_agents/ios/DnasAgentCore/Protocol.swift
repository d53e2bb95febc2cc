// The agent protocol of device_agents/PROTOCOL.md (protocol 2: batches), as Codable types and one client.
// No UIKit here: this file builds in the SwiftPM package (Package.swift) on macOS and Linux, Swift 6 mode.
import Foundation

#if canImport(FoundationNetworking)
// Linux: URLSession lives here and is not declared Sendable there (it is on Apple's SDKs, and is thread-safe).
@preconcurrency import FoundationNetworking
#endif

/// Any JSON value a context may hold.
enum JSONValue: Codable, Equatable, Sendable {
    case string(String), number(Double), bool(Bool), null

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else { self = .string(try c.decode(String.self)) }
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let n): try c.encode(n)
        case .bool(let b): try c.encode(b)
        case .null: try c.encodeNil()
        }
    }
}

struct Fingerprint: Codable, Sendable {
    var model: String?
    var soc: String?
    var os: String?
    var runtime: String?
    var runtime_version: String?
    var cores: Int?
    var extra: [String: String] = [:]
}

struct MeasureConfig: Codable, Sendable {
    let threads: Int
    let warmup: Int
    let rounds: Int
    let runs_per_round: Int
    let precision: String?  // "fp32" or "int8" (QDQ models); services before int8 do not send it

    var precisionName: String { precision ?? "fp32" }
}

struct LeaseRequest: Codable, Sendable {
    let wait_seconds: Double
    let max_jobs: Int
    let `protocol`: Int
}

struct BatchJob: Codable, Sendable {
    let job_id: Int
    let lease_token: String
    let attempt: Int
    let op_key: String
    let model_url: String
    let model_sha256: String
    let model_bytes: Int
    let input_shape: [Int]
}

struct Batch: Codable, Sendable {
    let lease_token: String
    let lease_seconds: Double
    let batch_group: String?
    let seed: UInt64
    let config: MeasureConfig
    let jobs: [BatchJob]
}

struct BatchResult: Codable, Sendable {
    let job_id: Int
    let median_us, mean_us, p10_us, p90_us, std_us: Double
    let n: Int
    let rounds: Int
    let round_medians_us: [Double]
    let estimator: String
    let context: [String: JSONValue]
}

struct ResultsBody: Codable, Sendable { let lease_token: String; let results: [BatchResult] }
struct LeaseProof: Codable, Sendable { let lease_token: String }
struct FailureBody: Codable, Sendable { let lease_token: String; let reason: String }
struct Ack: Codable, Sendable { let job_id: Int; let status: String; let replayed: Bool? }
struct Acks: Codable, Sendable { let acks: [Ack] }

enum ProtocolError: Error, LocalizedError, Sendable {
    case refused(Int, String)  // 4xx: retrying will not help (409: the lease is no longer ours)
    case transient(String)  // network, 502/503/504: retried with backoff
    case corruptModel(String)

    var errorDescription: String? {
        switch self {
        case .refused(let code, let detail): return "HTTP \(code): \(detail)"
        case .transient(let why): return "transient: \(why)"
        case .corruptModel(let why): return why
        }
    }
}

/// One result posted on its own (protocol 1's `POST /v1/agent/jobs/{id}/result`): the 422 fallback of a batch.
struct SingleResultBody: Codable, Sendable {
    let lease_token: String
    let median_us, mean_us, p10_us, p90_us, std_us: Double
    let n: Int
    let rounds: Int
    let round_medians_us: [Double]
    let estimator: String
    let context: [String: JSONValue]

    init(_ r: BatchResult, leaseToken: String) {
        lease_token = leaseToken
        median_us = r.median_us; mean_us = r.mean_us; p10_us = r.p10_us; p90_us = r.p90_us; std_us = r.std_us
        n = r.n; rounds = r.rounds; round_medians_us = r.round_medians_us; estimator = r.estimator
        context = r.context
    }
}

/// An error body's `detail` as one line: a sentence, or (422) FastAPI's list of refused fields, as
/// search/tables/client.py's error_detail renders it.
func errorDetail(_ data: Data) -> String {
    guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let detail = object["detail"]
    else { return String(decoding: data.prefix(500), as: UTF8.self) }
    if let sentence = detail as? String { return sentence }
    guard let items = detail as? [Any] else { return String(describing: detail) }
    return items.prefix(5).map { item -> String in
        guard let err = item as? [String: Any] else { return String(describing: item) }
        let loc = (err["loc"] as? [Any] ?? []).map { "\($0)" }.filter { $0 != "body" }.joined(separator: ".")
        return "\(loc.isEmpty ? "body" : loc): \(err["msg"] ?? "")"
    }.joined(separator: "; ")
}

/// The protocol's calls. Sendable (immutable; URLSession is thread-safe), so the heartbeat task, the measuring
/// task and the main actor share one.
final class AgentClient: Sendable {
    let server: ServerURL
    private let token: String
    private let session: URLSession

    init(server: ServerURL, token: String) {
        self.server = server
        self.token = token
        let config = URLSessionConfiguration.default
        config.timeoutIntervalForRequest = 150  // longer than one long poll
        self.session = URLSession(configuration: config)
    }

    /// `timeout` bounds one request (a heartbeat must end before the next is due); nil keeps the session's 150 s.
    private func request(_ method: String, _ path: String, body: (any Encodable & Sendable)? = nil,
                         timeout: TimeInterval? = nil) async throws -> (Data, Int)
    {
        var req = URLRequest(url: try server.resolve(path))  // refused (never sent) unless on the server
        req.httpMethod = method
        req.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        if let timeout { req.timeoutInterval = timeout }
        if let body {
            req.setValue("application/json", forHTTPHeaderField: "Content-Type")
            req.httpBody = try JSONEncoder().encode(AnyEncodable(body))
        }
        let data: Data, response: URLResponse
        do {
            (data, response) = try await session.data(for: req)
        } catch {
            throw ProtocolError.transient(error.localizedDescription)
        }
        let code = (response as? HTTPURLResponse)?.statusCode ?? 0
        if [502, 503, 504].contains(code) { throw ProtocolError.transient("HTTP \(code)") }
        if code >= 400 { throw ProtocolError.refused(code, errorDetail(data)) }
        return (data, code)
    }

    /// Retries transient failures with PROTOCOL.md's backoff until `deadline`, then throws the last one. The sleep
    /// never throws: a stopping app still gets its result or give-back through.
    func withRetry<T>(until deadline: Date, _ call: () async throws -> T) async throws -> T {
        var backoff = Backoff()
        while true {
            do { return try await call() } catch ProtocolError.transient(let why) {
                let pause = backoff.next(random: Double.random(in: 0..<1))
                if Date().addingTimeInterval(pause) > deadline { throw ProtocolError.transient(why) }
                try? await Task.sleep(nanoseconds: UInt64(pause * 1e9))
            }
        }
    }

    func withRetry<T>(retryFor: TimeInterval = 600, _ call: () async throws -> T) async throws -> T {
        try await withRetry(until: Date().addingTimeInterval(retryFor), call)
    }

    func reportFingerprint(_ fp: Fingerprint) async throws {
        _ = try await withRetry { try await request("PUT", "/v1/agent/fingerprint", body: fp) }
    }

    /// Protocol 2: a batch of up to `maxJobs` jobs of one group, or nil after the long poll (204).
    func leaseBatch(waitSeconds: Double, maxJobs: Int, retryFor: TimeInterval = 600) async throws -> Batch? {
        let body = LeaseRequest(wait_seconds: waitSeconds, max_jobs: maxJobs, protocol: 2)
        let (data, code) = try await withRetry(retryFor: retryFor) {
            try await request("POST", "/v1/agent/lease", body: body)
        }
        return code == 204 ? nil : try JSONDecoder().decode(Batch.self, from: data)
    }

    /// The model's bytes, from the server's own scheme, host and port only (`URLRefusal` otherwise). The caller
    /// checks them against `model_sha256` (CryptoKit, in the app) before measuring anything.
    func downloadModel(_ job: BatchJob) async throws -> Data {
        _ = try server.resolve(job.model_url)  // a foreign URL fails the job at once, not after retries
        let (data, _) = try await withRetry { try await request("GET", job.model_url) }
        return data
    }

    /// Throws `.refused(409, ...)` when nothing is held under the token any more: stop and discard. Ends within
    /// `within` seconds, each request's wait included: a call hanging on a stalled service would otherwise
    /// outlive the lease (issue 21, item 7).
    func heartbeat(leaseToken: String, within: TimeInterval) async throws {
        let deadline = Date().addingTimeInterval(within)
        _ = try await withRetry(until: deadline) {
            try await request("POST", "/v1/agent/heartbeat", body: LeaseProof(lease_token: leaseToken),
                              timeout: max(0.05, deadline.timeIntervalSinceNow))
        }
    }

    func results(leaseToken: String, _ results: [BatchResult]) async throws -> [Ack] {
        let body = ResultsBody(lease_token: leaseToken, results: results)
        let (data, _) = try await withRetry { try await request("POST", "/v1/agent/results", body: body) }
        return try JSONDecoder().decode(Acks.self, from: data).acks
    }

    /// One result on its own (protocol 1), the fallback when the service refuses a batch's POST whole (422).
    func result(_ job: BatchJob, _ result: BatchResult) async throws -> Ack {
        let body = SingleResultBody(result, leaseToken: job.lease_token)
        let (data, _) = try await withRetry {
            try await request("POST", "/v1/agent/jobs/\(job.job_id)/result", body: body)
        }
        return try JSONDecoder().decode(Ack.self, from: data)
    }

    func failure(_ job: BatchJob, reason: String) async throws {
        let body = FailureBody(lease_token: job.lease_token, reason: String(reason.prefix(4000)))
        _ = try await withRetry(retryFor: 30) {
            try await request("POST", "/v1/agent/jobs/\(job.job_id)/failure", body: body)
        }
    }
}

struct AnyEncodable: Encodable {
    let value: any Encodable
    init(_ value: any Encodable) { self.value = value }
    func encode(to encoder: Encoder) throws { try value.encode(to: encoder) }
}
