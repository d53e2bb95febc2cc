// Where the app's calls go. Every API path and every model URL is resolved against the one server URL the app
// was given, so the agent token goes nowhere else (PROTOCOL.md, "Fetch the models"):
// - a path (`/v1/agent/models/k`) goes below the server URL, its path prefix kept (`http://h/dnas` ->
//   `http://h/dnas/v1/agent/models/k`), as httpx's base_url does for the Python agent;
// - an absolute URL is followed only if its scheme, host and port are the server's (default ports compared as
//   such); its path loses the server's prefix if it has it, and gets it otherwise (device_agents/client.py's
//   model_path);
// - anything else (another host, `//host/...`, a relative path without a leading slash) is refused and the job
//   fails with the reason; no request is made.
// spec/url_resolution.json holds the cases; tests/test_ios_specs.py runs them against the Python client and
// Tests/DnasAgentCoreTests against this file.
import Foundation

enum URLRefusal: Error, LocalizedError, Equatable {
    case badServer(String)
    case neitherPathNorURL(String)
    case otherServer(String, server: String)

    var errorDescription: String? {
        switch self {
        case .badServer(let s): return "server URL \(s.prefix(100)) is not an http(s) URL with a host"
        case .neitherPathNorURL(let u): return "model_url \(u.prefix(100)) is neither a path nor a URL"
        case .otherServer(let u, let server):
            return "model_url \(u.prefix(100)) is not on \(server); refusing to send the token there"
        }
    }
}

struct ServerURL: Sendable, Equatable, CustomStringConvertible {
    let scheme: String  // lowercased
    let host: String  // lowercased; an IPv6 address without its brackets
    let port: Int?  // nil for the scheme's default port
    let basePath: String  // percent-encoded, without a trailing slash: "" or "/dnas"

    init(_ string: String) throws {
        guard let c = URLComponents(string: string.trimmingCharacters(in: .whitespaces)),
              let scheme = c.scheme?.lowercased(), ["http", "https"].contains(scheme),
              let host = c.host, !host.isEmpty
        else { throw URLRefusal.badServer(string) }
        self.scheme = scheme
        self.host = Self.bare(host)
        self.port = Self.effective(c.port, scheme: scheme)
        var path = c.percentEncodedPath
        while path.hasSuffix("/") { path.removeLast() }
        self.basePath = path
    }

    /// `scheme://host[:port]`, the default port left out.
    var origin: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(scheme)://\(h)" + (port.map { ":\($0)" } ?? "")
    }

    var description: String { origin + basePath }

    /// The URL a call to `pathOrURL` goes to, or a refusal (nothing is sent then).
    func resolve(_ pathOrURL: String) throws -> URL {
        let withoutFragment = String(pathOrURL.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0])
        var path: String
        if withoutFragment.hasPrefix("/") && !withoutFragment.hasPrefix("//") {
            path = withoutFragment
        } else if let c = URLComponents(string: withoutFragment), let scheme = c.scheme?.lowercased(),
                  let host = c.host
        {
            guard scheme == self.scheme, Self.bare(host) == self.host,
                  Self.effective(c.port, scheme: scheme) == self.port
            else { throw URLRefusal.otherServer(pathOrURL, server: description) }
            path = c.percentEncodedPath.isEmpty ? "/" : c.percentEncodedPath
            if !basePath.isEmpty && path.hasPrefix(basePath + "/") { path.removeFirst(basePath.count) }
            if let query = c.percentEncodedQuery { path += "?" + query }
        } else {
            throw URLRefusal.neitherPathNorURL(pathOrURL)
        }
        guard let url = URL(string: origin + basePath + path) else { throw URLRefusal.neitherPathNorURL(pathOrURL) }
        return url
    }

    private static func bare(_ host: String) -> String {
        var h = host.lowercased()
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        return h
    }

    private static func effective(_ port: Int?, scheme: String) -> Int? {
        switch (scheme, port) {
        case ("http", 80), ("https", 443): return nil
        default: return port
        }
    }
}
