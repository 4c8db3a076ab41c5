import Atomics
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import UnibusBroker

/// What one control-plane listener lets a client hold: an outsider can open
/// sockets and send bytes slowly, and none of it may stop the node serving.
public struct ControlServerLimits: Sendable {
    /// Concurrent connections; more are closed at once (and counted).
    public var maxConnections = 256
    /// From accept (TLS handshake included), or from the end of the previous
    /// answer on a kept-alive connection, to the end of a whole request:
    /// slow or idle sockets are closed when it passes (slow-loris).
    public var requestTimeout: TimeAmount = .seconds(10)
    /// Request headers: total bytes, one field's bytes, and field count.
    public var maxHeaderBytes = 16 * 1024
    public var maxHeaderFieldBytes = 8 * 1024
    public var maxHeaderFields = 64

    public init() {}
}

/// The control plane over HTTP/1.1: TLS by default; plain HTTP only when
/// the caller (unibusd) allows it, which it does on loopback in dev mode.
public final class ControlServer: Sendable {
    private let plane: ControlPlane
    private let group: EventLoopGroup
    /// The TLS context in use (replaced on reload; nil: plain HTTP, loopback dev mode).
    public let tls: Reloadable<NIOSSLContext?>
    private let limits: ControlServerLimits
    private let open = ManagedAtomic<Int>(0)

    public init(plane: ControlPlane, group: EventLoopGroup, tls: NIOSSLContext?, limits: ControlServerLimits = ControlServerLimits()) {
        self.plane = plane
        self.group = group
        self.tls = Reloadable(tls)
        self.limits = limits
    }

    /// Connections open now.
    public var openConnections: Int { open.load(ordering: .relaxed) }

    /// Binds and returns the channel (its port with port 0).
    public func start(host: String, port: Int) async throws -> Channel {
        let plane = self.plane
        let tls = self.tls
        let limits = self.limits
        let open = self.open
        let statistics = plane.node.broker.statistics
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
        decoderLimits.maxHeaderFieldSize = limits.maxHeaderFieldBytes
        decoderLimits.maxHeaderFieldCount = limits.maxHeaderFields
        do {
            return try await bind(host: host, port: port, plane: plane, tls: tls, limits: limits, open: open, statistics: statistics,
                                  decoderLimits: decoderLimits)
        } catch {
            throw ListenerError(listener: "control plane (--control-listen)", host: host, port: port, underlying: error)
        }
    }

    private func bind(host: String, port: Int, plane: ControlPlane, tls: Reloadable<NIOSSLContext?>, limits: ControlServerLimits,
                      open: ManagedAtomic<Int>, statistics: BrokerStatistics,
                      decoderLimits: NIOHTTPDecoderLimitConfiguration) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                guard open.wrappingIncrementThenLoad(ordering: .relaxed) <= limits.maxConnections else {
                    open.wrappingDecrement(ordering: .relaxed)
                    statistics.controlConnectionsCut.wrappingIncrement(ordering: .relaxed)
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.wrappingDecrement(ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    if let tls = tls.current {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withEncoderConfiguration: .init(), withDecoderLimitConfiguration: decoderLimits)
                    try channel.pipeline.syncOperations.addHandler(ControlHTTPHandler(plane: plane, requestTimeout: limits.requestTimeout))
                }
            }
            .bind(host: host, port: port).get()
    }
}

/// Collects one request (body capped) and answers it through `ControlPlane`.
final class ControlHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: state is touched only on the channel's event loop.
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let plane: ControlPlane
    private let requestTimeout: TimeAmount
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    /// Bytes of this request's body beyond the ordinary limit, taken from
    /// the plane's shared budget (`ControlPlane.largeBodyBudget`).
    private var reserved = 0
    /// Closes the connection unless a whole request arrives in time.
    private var deadline: Scheduled<Void>?

    init(plane: ControlPlane, requestTimeout: TimeAmount) {
        self.plane = plane
        self.requestTimeout = requestTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        releaseReservation()
    }

    private func releaseReservation() {
        if reserved > 0 { plane.releaseLargeBody(reserved) }
        reserved = 0
    }

    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        let statistics = plane.node.broker.statistics
        deadline = context.eventLoop.scheduleTask(in: requestTimeout) {
            statistics.controlConnectionsCut.wrappingIncrement(ordering: .relaxed)
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            head = requestHead
            body.removeAll()
            tooLarge = false
            releaseReservation()
        case .body(var chunk):
            guard !tooLarge, let head else { return }
            let total = body.count + chunk.readableBytes
            let limit = ControlPlane.bodyLimit(method: head.method.rawValue, path: head.uri)
            if total > limit {
                tooLarge = true
            } else if total > ControlPlane.maximumBody {
                // Beyond the ordinary limit only from a budget shared by all
                // connections, so large bodies cannot add up to a memory sink.
                let needed = total - ControlPlane.maximumBody - reserved
                if needed > 0 {
                    guard plane.reserveLargeBody(needed) else {
                        tooLarge = true
                        return
                    }
                    reserved += needed
                }
            }
            if !tooLarge, let bytes = chunk.readBytes(length: chunk.readableBytes) {
                body += bytes
            }
        case .end:
            guard let head else { return }
            self.head = nil
            // A whole request arrived: no deadline while the node answers.
            deadline?.cancel()
            deadline = nil
            if tooLarge {
                releaseReservation()
                let limit = ControlPlane.bodyLimit(method: head.method.rawValue, path: head.uri)
                respond(context: context, head: head, response: .error(413, "request body over \(limit) bytes "
                                                                        + "(or the node is receiving other large requests; retry)"))
                return
            }
            let plane = self.plane
            let requestBody = body
            body = []
            let held = reserved
            reserved = 0
            let headers = head.headers
            let peer = context.channel.remoteAddress?.ipAddress
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let promise = context.eventLoop.makePromise(of: ControlResponse.self)
            promise.completeWithTask {
                defer { if held > 0 { plane.releaseLargeBody(held) } }
                return await plane.handle(method: head.method.rawValue, path: head.uri,
                                          header: { headers.first(name: $0) }, body: requestBody, peer: peer)
            }
            promise.futureResult.whenSuccess { response in
                let (handler, context) = loopBound.value
                handler.respond(context: context, head: head, response: response)
            }
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, response: ControlResponse) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: response.contentType)
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        if let events = response.events {
            stream(events, context: context, head: head, headers: headers)
            return
        }
        headers.add(name: "content-length", value: String(response.body.count))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        } else {
            armDeadline(context: context)   // the next request has the same time
        }
    }

    /// A server-sent event stream: the head now, each chunk as it comes,
    /// then the connection closes. The stream ends when the peer goes.
    private func stream(_ events: AsyncStream<[UInt8]>, context: ChannelHandlerContext, head: HTTPRequestHead, headers: HTTPHeaders) {
        var headers = headers
        headers.add(name: "connection", value: "close")
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
        let channel = context.channel
        let task = Task {
            for await chunk in events {
                guard channel.isActive else { break }
                var buffer = channel.allocator.buffer(capacity: chunk.count)
                buffer.writeBytes(chunk)
                // Paced by the socket: a reader that does not read holds one chunk, not a backlog.
                try? await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)))
            }
            try? await channel.writeAndFlush(HTTPServerResponsePart.end(nil))
            try? await channel.close()
        }
        channel.closeFuture.whenComplete { _ in task.cancel() }
    }
}
