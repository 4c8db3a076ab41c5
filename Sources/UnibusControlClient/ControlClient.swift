import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import UnibusCrypto
import UnibusMembership

/// A small HTTPS client for the control plane, used by the `unibus` CLI and
/// tests. TLS trusts only the pinned CA; plain HTTP only to loopback.
public final class ControlClient: Sendable {
    /// A control-plane call that failed: `status` is the node's HTTP status
    /// when it answered with an error, nil when it could not be reached or
    /// its answer was cut off or not understood.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
        public let status: Int?
        /// The connection closed before a whole answer arrived.
        public let incomplete: Bool

        public init(description: String, status: Int? = nil, incomplete: Bool = false) {
            self.description = description
            self.status = status
            self.incomplete = incomplete
        }
    }

    public struct Response: Sendable {
        public let status: Int
        public let body: [UInt8]
        /// The body as a typed message, or nil when it is not one.
        public func decode<T: Decodable>(_ type: T.Type) -> T? { ControlAPI.decode(type, from: body) }
        /// The server's `{"error": "..."}` text, or the raw body.
        public var errorText: String {
            decode(ControlAPI.ErrorBody.self)?.error ?? String(decoding: body.prefix(512), as: UTF8.self)
        }
    }

    public let host: String
    /// The pinned CA file, for error messages.
    private let caPath: String?
    public let port: Int
    private let tls: NIOSSLContext?
    private let group: EventLoopGroup

    /// `url` is `https://HOST:PORT` (with `caPath`) or `http://127.0.0.1:PORT`.
    /// A remote node without a pinned CA is refused.
    public init(url: String, caPath: String?, clientCertificate: ClientCertificate? = nil,
                group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host else {
            throw Failure(description: "invalid node URL \(url); expected https://HOST:PORT")
        }
        let loopback = host == "localhost" || host == "::1" || host.hasPrefix("127.")
        self.host = host
        self.caPath = caPath
        self.group = group
        switch scheme {
        case "https":
            guard let caPath else {
                throw Failure(description: "refusing to talk to \(url) without --ca: give the node's CA certificate so its identity is pinned")
            }
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .file(caPath)
            configuration.minimumTLSVersion = .tlsv12
            try clientCertificate?.apply(to: &configuration)
            tls = try NIOSSLContext(configuration: configuration)
            port = components.port ?? 443
        case "http":
            guard loopback else {
                throw Failure(description: "refusing plain http to \(host): only loopback nodes may run without TLS; use https:// and --ca")
            }
            tls = nil
            port = components.port ?? 80
        default:
            throw Failure(description: "unsupported scheme \(scheme) in \(url)")
        }
    }

    /// Sends one request; `identity` signs it for `nodeID` when given.
    /// `headers` are sent as given (a proxy forwards a caller's signature with them).
    public func request(_ method: String, _ path: String, body: [UInt8] = [], identity: Identity? = nil, nodeID: String? = nil,
                        headers extra: [(String, String)] = []) async throws -> Response {
        var headers = HTTPHeaders()
        headers.add(name: "host", value: host)
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "connection", value: "close")
        if !body.isEmpty { headers.add(name: "content-type", value: "application/json") }
        for (name, value) in extra { headers.add(name: name, value: value) }
        if let identity, let nodeID {
            for (name, value) in RequestSignature.headers(method: method, path: path, body: body, nodeID: nodeID, identity: identity) {
                headers.add(name: name, value: value)
            }
        }
        let collector = ResponseCollector()
        let tls = self.tls
        let serverHostname = host.first?.isNumber == true ? nil : host
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls {
                            try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverHostname))
                        }
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(collector)
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            collector.response.fail(error)   // never leave the promise pending
            throw Failure(description: "cannot reach the control plane at " + ConnectionDiagnosis.describe(
                error, address: "\(host):\(port)", plane: "control plane", caPath: caPath))
        }
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path)
        head.headers = headers
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        var buffer = channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
        do {
            do {
                try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
            } catch {
                // The write failed because the connection went (a TLS
                // handshake refused, say): the collector has the real cause.
                _ = try await collector.response.futureResult.get()
                throw error
            }
            let response = try await collector.response.futureResult.get()
            try? await channel.closeFuture.get()   // nothing of this request outlives it
            return response
        } catch {
            try? await channel.close()
            var reason = ConnectionDiagnosis.describe(error, address: "\(host):\(port)", plane: "control plane", caPath: caPath)
            if tls == nil, (error as? Failure)?.incomplete == true {
                reason += " (if the node serves https, use https:// and --ca)"
            }
            throw Failure(description: "the control plane did not answer: " + reason)
        }
    }
}

private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    let response: EventLoopPromise<ControlClient.Response>
    private var status = 0
    private var body: [UInt8] = []

    private var done = false
    /// A response body larger than this is an error, not a memory sink.
    static let maximumBody = 16 * 1024 * 1024

    init() {
        response = MultiThreadedEventLoopGroup.singleton.next().makePromise()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(var chunk):
            guard body.count + chunk.readableBytes <= Self.maximumBody else {
                finish(.failure(ControlClient.Failure(description: "the node's answer is larger than \(Self.maximumBody) bytes")))
                context.close(promise: nil)
                return
            }
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            finish(.success(ControlClient.Response(status: status, body: body)))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Closed before a whole answer arrived: fail rather than wait forever.
        finish(.failure(ControlClient.Failure(description: "the connection closed before a complete answer", incomplete: true)))
        context.fireChannelInactive()
    }

    private func finish(_ result: Result<ControlClient.Response, Error>) {
        guard !done else { return }
        done = true
        response.completeWith(result)
    }
}

/// A caller's session with one node's control plane: the node's id (every
/// signed request names it, so a captured request cannot be replayed against
/// another node) and the identity that signs. The CLI and the client
/// library both go through it.
public struct ControlSession: Sendable {
    public let client: ControlClient
    public let identity: Identity
    public let nodeID: String
    public let url: String

    /// Connects to `url` (pinned `caPath` for https) and asks the node for its id.
    public static func open(url: String, caPath: String?, identity: Identity,
                            clientCertificate: ClientCertificate? = nil) async throws -> ControlSession {
        let client = try ControlClient(url: url, caPath: caPath, clientCertificate: clientCertificate)
        let info = try await client.request("GET", "/v1/node")
        guard info.status == 200, let nodeID = info.decode(ControlAPI.NodeInfo.self)?.nodeID else {
            throw ControlClient.Failure(description: "\(url) did not identify itself as a Unibus node (\(info.status): \(info.errorText))")
        }
        return ControlSession(client: client, identity: identity, nodeID: nodeID, url: url)
    }

    /// A signed request; a non-2xx answer is thrown with the node's error text.
    public func call(_ method: String, _ path: String, body: [UInt8] = []) async throws -> ControlClient.Response {
        let response = try await client.request(method, path, body: body, identity: identity, nodeID: nodeID)
        guard (200..<300).contains(response.status) else {
            throw ControlClient.Failure(description: "\(method) \(path): \(response.status) \(response.errorText)", status: response.status)
        }
        return response
    }

    /// A signed request whose answer must be the typed message `T`.
    public func call<T: Decodable>(_ method: String, _ path: String, body: [UInt8] = [], expecting type: T.Type) async throws -> T {
        let response = try await call(method, path, body: body)
        guard let message = response.decode(type) else {
            throw ControlClient.Failure(description: "\(method) \(path): \(url) answered with something that is not a \(T.self)")
        }
        return message
    }

    /// The node's log heads (for an operation to name as its predecessors).
    public func heads() async throws -> [String] {
        try await call("GET", "/v1/log/heads", expecting: ControlAPI.LogHeads.self).heads
    }

    /// Signs `operation` as the caller, naming the node's current heads as
    /// its predecessors, and submits it. (The client library names the heads
    /// of its own verified log instead.)
    public func submit(_ operation: MembershipOperation) async throws -> ControlAPI.OperationAccepted {
        try await submit(SignedOperation.sign(operation, by: identity, parents: try await heads()))
    }

    /// Submits an operation already signed (a checkpoint to its own endpoint).
    public func submit(_ signed: SignedOperation) async throws -> ControlAPI.OperationAccepted {
        try await call("POST", ControlAPI.submissionPath(for: signed), body: ControlAPI.encode(ControlAPI.OperationDocument(signed)),
                       expecting: ControlAPI.OperationAccepted.self)
    }
}

/// Why fetching the membership log from a node failed.
public enum LogSyncError: Error, CustomStringConvertible, Sendable {
    /// The node could not be asked (transport) or answered with an error.
    case call(ControlClient.Failure)
    /// The node served something that does not verify; nothing after it was used.
    case untrusted(node: String, reason: String)

    public var description: String {
        switch self {
        case .call(let failure): return failure.description
        case .untrusted(let node, let reason): return "the node at \(node) served membership data that does not verify: \(reason)"
        }
    }
}

extension ControlSession {
    /// Fetches the signed operations a log lacks from this node, page by
    /// page (`POST /v1/log` with the log's heads), and hands each, signature
    /// verified, to `insert` (which verifies its place and folds it:
    /// `MembershipLog.insert`). An operation that does not verify, arrives
    /// before its predecessors, or is refused outright ends the sync with an
    /// error naming this node; so does a node that pages without progress.
    /// Returns how many operations were new.
    public func syncLog(heads: () -> [String],
                        insert: (SignedOperation) throws(MembershipError) -> MembershipLog.InsertOutcome,
                        isolation: isolated (any Actor)? = #isolation) async throws(LogSyncError) -> Int {
        var added = 0
        for _ in 0..<100_000 {
            let request = ControlAPI.LogRequest(heads: Array(heads().prefix(ControlAPI.LogRequest.maximumHeads)))
            let page: ControlAPI.LogPage
            do {
                page = try await call("POST", "/v1/log", body: ControlAPI.encode(request), expecting: ControlAPI.LogPage.self)
            } catch let failure as ControlClient.Failure {
                throw .call(failure)
            } catch {
                throw .call(ControlClient.Failure(description: "\(error)"))
            }
            var progress = 0
            for document in page.operations {
                let operation: SignedOperation
                let outcome: MembershipLog.InsertOutcome
                do {
                    operation = try document.verified()
                    outcome = try insert(operation)
                } catch {
                    throw .untrusted(node: url, reason: "\(error)")
                }
                switch outcome {
                case .waiting(let missing):
                    throw .untrusted(node: url, reason: "operation \(operation.id.prefix(16))… came before its predecessor \(missing[0].prefix(16))…")
                case .inserted, .adopted:
                    progress += 1
                case .known:
                    break
                }
            }
            added += progress
            if page.complete { return added }
            // A node that keeps answering "more" without anything new is not
            // paging honestly (or the caller holds more heads than it can name).
            guard progress > 0 else {
                throw .untrusted(node: url, reason: "it keeps announcing more operations but sends none the log lacks")
            }
        }
        return added
    }

    /// The whole log from this node, verified from `root` (for tools).
    public func verifiedLog(root: String) async throws(LogSyncError) -> MembershipLog {
        var log = MembershipLog(pinnedRoot: root)
        _ = try await syncLog(heads: { log.heads }, insert: { operation throws(MembershipError) in try log.insert(operation) })
        return log
    }
}
