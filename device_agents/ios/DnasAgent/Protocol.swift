// The agent protocol of device_agents/PROTOCOL.md, as Codable types and one URLSession client.
import Foundation

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
    let runtime: String
    let threads: Int
    let precision: String
    let warmup: Int
    let runs: Int
}

struct LeasedJob: Codable {
    let job_id: Int
    let lease_token: String
    let lease_seconds: Double
    let attempt: Int
    let op_key: String
    let model_url: String
    let model_sha256: String
    let model_bytes: Int
    let input_shape: [Int]
    let config: MeasureConfig
}

struct ResultBody: Codable {
    let lease_token: String
    let median_us: Double
    let mean_us: Double
    let p10_us: Double
    let p90_us: Double
    let std_us: Double
    let n: Int
    let context: [String: String]
}

struct LeaseProof: Codable { let lease_token: String }
struct FailureBody: Codable { let lease_token: String; let reason: String }
struct Ack: Codable { let job_id: Int; let status: String; let replayed: Bool? }

enum ProtocolError: Error, LocalizedError {
    case refused(Int, String)   // 4xx: retrying will not help
    case transient(String)      // network, 502/503/504: retry with backoff
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

    private func request(_ method: String, _ path: String, body: Encodable? = nil) async throws -> (Data, Int) {
        var req = URLRequest(url: path.hasPrefix("http") ? URL(string: path)! : server.appendingPathComponent(path))
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

    /// Retries transient failures with exponential backoff (0.5 s doubling to 30 s, with jitter).
    func withRetry<T>(_ call: () async throws -> T) async throws -> T {
        var delay = 0.5
        while true {
            do { return try await call() } catch ProtocolError.transient(let why) {
                print("retrying in \(delay)s: \(why)")
                try await Task.sleep(nanoseconds: UInt64(delay * (0.5 + Double.random(in: 0..<1)) * 1e9))
                delay = min(delay * 2, 30)
            }
        }
    }

    func reportFingerprint(_ fp: Fingerprint) async throws {
        _ = try await withRetry { try await request("PUT", "v1/agent/fingerprint", body: fp) }
    }

    func lease(waitSeconds: Double) async throws -> LeasedJob? {
        let (data, code) = try await withRetry {
            try await request("POST", "v1/agent/lease", body: ["wait_seconds": waitSeconds])
        }
        return code == 204 ? nil : try JSONDecoder().decode(LeasedJob.self, from: data)
    }

    func downloadModel(_ job: LeasedJob) async throws -> Data {
        let (data, _) = try await withRetry { try await request("GET", job.model_url) }
        let digest = sha256Hex(data)
        guard digest == job.model_sha256 else {
            throw ProtocolError.corruptModel("model for job \(job.job_id) is corrupt: sha256 \(digest.prefix(12))")
        }
        return data
    }

    func heartbeat(_ job: LeasedJob) async throws {
        _ = try await request("POST", "v1/agent/jobs/\(job.job_id)/heartbeat", body: LeaseProof(lease_token: job.lease_token))
    }

    func result(_ job: LeasedJob, _ body: ResultBody) async throws -> Ack {
        let (data, _) = try await withRetry { try await request("POST", "v1/agent/jobs/\(job.job_id)/result", body: body) }
        return try JSONDecoder().decode(Ack.self, from: data)
    }

    func failure(_ job: LeasedJob, reason: String) async throws {
        let body = FailureBody(lease_token: job.lease_token, reason: String(reason.prefix(4000)))
        _ = try await withRetry { try await request("POST", "v1/agent/jobs/\(job.job_id)/failure", body: body) }
    }
}

struct AnyEncodable: Encodable {
    let value: Encodable
    init(_ value: Encodable) { self.value = value }
    func encode(to encoder: Encoder) throws { try value.encode(to: encoder) }
}
