import Dispatch
import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import UnibusBroker
import UnibusControl
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusNode

/// Raw HTTP requests, as an outsider sends them, through NIO's HTTP decoder
/// (with the control plane's header limits) into `ControlPlane.handle`: the
/// headers, the signature check and the JSON bodies. With the first byte
/// odd, the harness signs each decoded request as the node's admin, so the
/// fuzzer also reaches what only an authenticated caller reaches (bodies of
/// operations, key shares, acknowledgements, paging). No sockets.
private final class Fixture: @unchecked Sendable {
    let admin = Identity()
    let plane: ControlPlane

    init() {
        let directory = NSTemporaryDirectory() + "unibus-fuzz-control-\(getpid())"
        let store = try! MembershipStore(directory: directory)   // the harness's own setup, not input
        try? store.append(store.signed(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                                handle: "root", role: .admin), by: admin))
        try? store.append(store.signed(.createRoom(id: "ops", subject: "rooms.ops", policy: RoomPolicy()), by: admin))
        var configuration = BrokerConfiguration()
        configuration.threads = 1
        configuration.authorizer = Node.authorizer(for: store)
        plane = ControlPlane(node: Node(broker: Broker(configuration: configuration), membership: store))
    }
}

nonisolated(unsafe) private let fixture = Fixture()

private final class Box: @unchecked Sendable { var response: ControlResponse? }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControlRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let mode = input.first else { return 0 }
    var limits = NIOHTTPDecoderLimitConfiguration()
    limits.maxHeaderListSize = 16 * 1024
    limits.maxHeaderFieldSize = 8 * 1024
    limits.maxHeaderFieldCount = 64
    let channel = EmbeddedChannel()
    defer { _ = try? channel.finish() }
    do {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(limitConfiguration: limits)))
        try channel.writeInbound(ByteBuffer(bytes: input.dropFirst()))
    } catch {
        return 0   // the decoder refused the bytes: the real server answers 400 and closes
    }
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
        switch part {
        case .head(let requestHead):
            head = requestHead
            body = []
        case .body(var chunk):
            if body.count + chunk.readableBytes <= ControlPlane.maximumBody { body += chunk.readBytes(length: chunk.readableBytes) ?? [] }
        case .end:
            guard let request = head else { continue }
            handle(request, body: body, signed: mode & 1 == 1)
            head = nil
        }
    }
    return 0
}

private func handle(_ head: HTTPRequestHead, body: [UInt8], signed: Bool) {
    var headers = head.headers
    if signed {
        for (name, value) in RequestSignature.headers(method: head.method.rawValue, path: head.uri, body: body,
                                                      nodeID: fixture.plane.node.broker.serverID, identity: fixture.admin) {
            headers.replaceOrAdd(name: name, value: value)
        }
    }
    let done = DispatchSemaphore(value: 0)
    let box = Box()
    let plane = fixture.plane
    let method = head.method.rawValue, path = head.uri
    let captured = headers
    Task {
        box.response = await plane.handle(method: method, path: path, header: { captured.first(name: $0) }, body: body)
        done.signal()
    }
    done.wait()
    guard let response = box.response, (200...599).contains(response.status) else {
        fatalError("the control plane gave no answer, or an impossible status")
    }
}
