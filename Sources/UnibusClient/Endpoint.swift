import Foundation

/// A data-plane address: `nats://HOST:PORT`, `tls://HOST:PORT` or `HOST:PORT`
/// (port 4222 when absent). `tls://` insists on TLS; with `nats://` TLS is
/// still used whenever the node requires it, and a non-loopback node that
/// does not offer TLS is refused.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: Int
    public let requiresTLS: Bool

    public init(host: String, port: Int, requiresTLS: Bool = false) {
        self.host = host
        self.port = port
        self.requiresTLS = requiresTLS
    }

    public init(parsing text: String) throws(ClientError) {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        var tls = false
        if let range = rest.range(of: "://") {
            switch rest[..<range.lowerBound].lowercased() {
            case "nats": tls = false
            case "tls": tls = true
            default: throw .invalidURL(text, "use nats://HOST:PORT or tls://HOST:PORT")
            }
            rest = rest[range.upperBound...]
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }   // user info is never used: nkeys authenticate
        var host = rest, port = 4222
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let parsed = Int(rest[rest.index(after: colon)...]), (1...65535).contains(parsed) else {
                throw .invalidURL(text, "the port must be 1 to 65535")
            }
            port = parsed
            host = rest[..<colon]
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { throw .invalidURL(text, "no host") }
        self.init(host: String(host), port: port, requiresTLS: tls)
    }

    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    public var description: String { "\(requiresTLS ? "tls" : "nats")://\(host.contains(":") ? "[\(host)]" : host):\(port)" }
}
