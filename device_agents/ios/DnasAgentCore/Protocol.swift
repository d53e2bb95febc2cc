// The agent protocol of device_agents/PROTOCOL.md (protocol 2: batches), as Codable types and one client.
import Foundation

/// Any JSON value a context may hold.
enum JSONValue: Codable, Equatable {
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

struct Fingerprint: Codable {
    var model: String?
    var soc: String?
    var os: String?
    var runtime: String?
    var runtime_version: String?
    var cores: Int?
    var extra: [String: String] = [:]
}

struct MeasureConfig: Codable {
    let threads: Int
    let warmup: Int
    let rounds: Int
    let runs_per_round: Int
    let precision: String?  // "fp32" or "int8" (QDQ models); services before int8 do not send it

    var precisionName: String { precision ?? "fp32" }
}

struct LeaseRequest: Codable {
    let wait_seconds: Double
    let max_jobs: Int
    let `protocol`: Int
}

struct BatchJob: Codable {
    let job_id: Int
    let lease_token: String
    let attempt: Int
    let op_key: String
    let model_url: String
    let model_sha256: String
    let model_bytes: Int
    let input_shape: [Int]
}

struct Batch: Codable {
    let lease_token: String
    let lease_seconds: Double
    let batch_group: String?
    let seed: UInt64
    let config: MeasureConfig
    let jobs: [BatchJob]
}

struct BatchResult: Codable {
    let job_id: Int
    let median_us, mean_us, p10_us, p90_us, std_us: Double
    let n: Int
    let rounds: Int
    let round_medians_us: [Double]
    let estimator: String
    let context: [String: JSONValue]
}

struct ResultsBody: Codable { let lease_token: String; let results: [BatchResult] }
struct LeaseProof: Codable { let lease_token: String }
struct FailureBody: Codable { let lease_token: String; let reason: String }
struct Ack: Codable { let job_id: Int; let status: String; let replayed: Bool? }
struct Acks: Codable { let acks: [Ack] }

enum ProtocolError: Error, LocalizedError {
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

final class AgentClient {
    let server: URL
    private let token: String
    private let session: URLSession

    init(server: URL, token: String) {
        self.server = server
        self.token = token
        let config = URLSessionConfiguration.default
        config.timeoutIntervalForRequest = 150  // longer than one long poll
        self.session = URLSession(configuration: config)
    }

    /// A path of the API, or a model URL as the service gives it: absolute, or relative to the server.
    private func url(_ path: String) -> URL {
        if let absolute = URL(string: path), absolute.scheme != nil { return absolute }
        return URL(string: path, relativeTo: server)?.absoluteURL ?? server.appendingPathComponent(path)
    }

    private func request(_ method: String, _ path: String, body: Encodable? = nil) async throws -> (Data, Int) {
        var req = URLRequest(url: url(path))
        req.httpMethod = method
        req.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
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
        if code >= 400 {
            let detail = (try? JSONDecoder().decode([String: String].self, from: data))?["detail"] ?? ""
            throw ProtocolError.refused(code, detail)
        }
        return (data, code)
    }

    /// Retries transient failures with exponential backoff (0.5 s doubling to 30 s, with jitter) for up to
    /// `retryFor` seconds. The sleep never throws: a stopping app still gets its result or give-back through.
    func withRetry<T>(retryFor: TimeInterval = 600, _ call: () async throws -> T) async throws -> T {
        var delay = 0.5
        let deadline = Date().addingTimeInterval(retryFor)
        while true {
            do { return try await call() } catch ProtocolError.transient(let why) {
                if Date().addingTimeInterval(delay) > deadline { throw ProtocolError.transient(why) }
                let pause = delay * (0.5 + Double.random(in: 0..<1))
                try? await Task.sleep(nanoseconds: UInt64(pause * 1e9))
                delay = min(delay * 2, 30)
            }
        }
    }

    func reportFingerprint(_ fp: Fingerprint) async throws {
        _ = try await withRetry { try await request("PUT", "v1/agent/fingerprint", body: fp) }
    }

    /// Protocol 2: a batch of up to `maxJobs` jobs of one group, or nil after the long poll (204).
    func leaseBatch(waitSeconds: Double, maxJobs: Int) async throws -> Batch? {
        let body = LeaseRequest(wait_seconds: waitSeconds, max_jobs: maxJobs, protocol: 2)
        let (data, code) = try await withRetry { try await request("POST", "v1/agent/lease", body: body) }
        return code == 204 ? nil : try JSONDecoder().decode(Batch.self, from: data)
    }

    func downloadModel(_ job: BatchJob) async throws -> Data {
        let (data, _) = try await withRetry { try await request("GET", job.model_url) }
        let digest = sha256Hex(data)
        guard digest == job.model_sha256 else {
            throw ProtocolError.corruptModel("model for job \(job.job_id) is corrupt: sha256 \(digest.prefix(12))")
        }
        return data
    }

    /// Throws `.refused(409, ...)` when nothing is held under the token any more: stop and discard.
    func heartbeat(leaseToken: String, retryFor: TimeInterval) async throws {
        _ = try await withRetry(retryFor: retryFor) {
            try await request("POST", "v1/agent/heartbeat", body: LeaseProof(lease_token: leaseToken))
        }
    }

    func results(leaseToken: String, _ results: [BatchResult]) async throws -> [Ack] {
        let body = ResultsBody(lease_token: leaseToken, results: results)
        let (data, _) = try await withRetry { try await request("POST", "v1/agent/results", body: body) }
        return try JSONDecoder().decode(Acks.self, from: data).acks
    }

    func failure(_ job: BatchJob, reason: String) async throws {
        let body = FailureBody(lease_token: job.lease_token, reason: String(reason.prefix(4000)))
        _ = try await withRetry(retryFor: 30) {
            try await request("POST", "v1/agent/jobs/\(job.job_id)/failure", body: body)
        }
    }
}

struct AnyEncodable: Encodable {
    let value: Encodable
    init(_ value: Encodable) { self.value = value }
    func encode(to encoder: Encoder) throws { try value.encode(to: encoder) }
}
