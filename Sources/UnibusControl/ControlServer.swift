import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// The control plane over HTTP/1.1: TLS by default; plain HTTP only when
/// the caller (unibusd) allows it, which it does on loopback in dev mode.
public final class ControlServer: Sendable {
    private let plane: ControlPlane
    private let group: EventLoopGroup
    private let tls: NIOSSLContext?

    public init(plane: ControlPlane, group: EventLoopGroup, tls: NIOSSLContext?) {
        self.plane = plane
        self.group = group
        self.tls = tls
    }

    /// Binds and returns the channel (its port with port 0).
    public func start(host: String, port: Int) async throws -> Channel {
        let plane = self.plane
        let tls = self.tls
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(ControlHTTPHandler(plane: plane))
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
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(plane: ControlPlane) {
        self.plane = plane
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            head = requestHead
            body.removeAll()
            tooLarge = false
        case .body(var chunk):
            if body.count + chunk.readableBytes > ControlPlane.maximumBody {
                tooLarge = true
            } else if let bytes = chunk.readBytes(length: chunk.readableBytes) {
                body += bytes
            }
        case .end:
            guard let head else { return }
            self.head = nil
            if tooLarge {
                respond(context: context, head: head, response: .error(413, "request body over \(ControlPlane.maximumBody) bytes"))
                return
            }
            let plane = self.plane
            let requestBody = body
            let headers = head.headers
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let promise = context.eventLoop.makePromise(of: ControlResponse.self)
            promise.completeWithTask {
                await plane.handle(method: head.method.rawValue, path: head.uri,
                                   header: { headers.first(name: $0) }, body: requestBody)
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
        }
    }
}
