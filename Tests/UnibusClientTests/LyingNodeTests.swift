import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
import UnibusClient
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusSQLite
import UnibusWire

/// A compromised node, as a proxy in front of a real one: it forwards every
/// control-plane request (signatures and all) and rewrites the answers.
final class LyingProxy: @unchecked Sendable {
    typealias Rewrite = @Sendable (_ method: String, _ path: String, _ body: [UInt8]) -> [UInt8]
    private let upstream: ControlClient
    private let rewrite: Rewrite
    private var channel: Channel?
    var url: String { "http://127.0.0.1:\(channel?.localAddress?.port ?? 0)" }

    init(upstream url: String, rewrite: @escaping Rewrite) throws {
        upstream = try ControlClient(url: url, caPath: nil)
        self.rewrite = rewrite
    }

    func start() async throws {
        let upstream = self.upstream, rewrite = self.rewrite
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(upstream: upstream, rewrite: rewrite))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func stop() async { try? await channel?.close() }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let upstream: ControlClient
        let rewrite: Rewrite
        var head: HTTPRequestHead?
        var body: [UInt8] = []

        init(upstream: ControlClient, rewrite: @escaping Rewrite) {
            self.upstream = upstream
            self.rewrite = rewrite
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): self.head = head; body = []
            case .body(var chunk): body += chunk.readBytes(length: chunk.readableBytes) ?? []
            case .end:
                guard let head else { return }
                let forwarded = head.headers.filter { $0.name.lowercased().hasPrefix("unibus-") }.map { ($0.name, $0.value) }
                let body = self.body, upstream = self.upstream, rewrite = self.rewrite
                let promise = context.eventLoop.makePromise(of: (Int, [UInt8]).self)
                promise.completeWithTask {
                    let response = try await upstream.request(head.method.rawValue, head.uri, body: body, headers: forwarded)
                    let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
                    return (response.status, response.status == 200 ? rewrite(head.method.rawValue, path, response.body) : response.body)
                }
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                promise.futureResult.whenComplete { result in
                    let context = bound.value
                    let (status, bytes) = (try? result.get()) ?? (502, Array("{\"error\":\"upstream\"}".utf8))
                    var headers = HTTPHeaders()
                    headers.add(name: "content-length", value: String(bytes.count))
                    headers.add(name: "connection", value: "close")
                    context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: status),
                                                                                      headers: headers))), promise: nil)
                    context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: bytes)))), promise: nil)
                    context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in context.close(promise: nil) }
                }
            }
        }
    }
}

/// Rewrites the operations of a `POST /v1/log` answer.
func rewriteLog(_ body: [UInt8], _ change: ([ControlAPI.OperationDocument]) -> [ControlAPI.OperationDocument]) -> [UInt8] {
    guard var page = ControlAPI.decode(ControlAPI.LogPage.self, from: body) else { return body }
    page.operations = change(page.operations)
    return ControlAPI.encode(page)
}

func kind(_ document: ControlAPI.OperationDocument) -> String {
    (try? document.verified())?.envelope.operation.kind ?? "?"
}

@Suite("A lying node", .serialized)
struct LyingNodeTests {
    /// The node alters signed operations, or serves them out of order: the
    /// client refuses the whole answer and names the node.
    @Test func alteredOrReorderedOperationsAreRefusedNamingTheNode() async throws {
        let node = try await TestNode()
        let tampering = try LyingProxy(upstream: node.controlURL) { _, path, body in
            guard path == "/v1/log" else { return body }
            return rewriteLog(body) { documents in
                documents.map { document in
                    // alice's exchange key swapped for the proxy's own.
                    guard var bytes = try? Base64.decode(document.bytes) else { return document }
                    var text = String(decoding: bytes, as: UTF8.self)
                    guard text.contains("\"handle\":\"alice\"") else { return document }
                    text = text.replacingOccurrences(of: Base64.encode(node.alice.keyExchange.publicKey.bytes),
                                                     with: Base64.encode(Identity().keyExchange.publicKey.bytes))
                    bytes = Array(text.utf8)
                    var forged = document
                    forged.bytes = Base64.encode(bytes)
                    return forged
                }
            }
        }
        try await tampering.start()
        await #expect {
            _ = try await node.client(node.bob) { $0.controlPlane = [tampering.url] }
        } throws: { error in
            guard case ClientError.untrustedNode(let at, let reason) = error else { return false }
            return at == tampering.url && reason.contains("signature")
        }
        let reordering = try LyingProxy(upstream: node.controlURL) { _, path, body in
            path == "/v1/log" ? rewriteLog(body) { $0.reversed() } : body
        }
        try await reordering.start()
        await #expect {
            _ = try await node.client(node.bob) { $0.controlPlane = [reordering.url] }
        } throws: { error in
            guard case ClientError.untrustedNode(let at, let reason) = error else { return false }
            return at == reordering.url && reason.contains("before its predecessor")
        }
        await tampering.stop()
        await reordering.stop()
        await node.stop()
    }

    /// The node adds a phantom member (an operation signed by a key that is
    /// nobody), flips `encrypt` and swaps exchange keys in every answer it
    /// can rewrite: the client uses none of it.
    @Test func phantomMembersFlippedPoliciesAndSwappedKeysAreIgnored() async throws {
        let node = try await TestNode()
        let phantom = Identity()
        let stranger = Identity()
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        let proxy = try LyingProxy(upstream: node.controlURL) { _, path, body in
            if path == "/v1/log" {
                return rewriteLog(body) { documents in
                    guard let heads = ControlAPI.decode(ControlAPI.LogPage.self, from: body)?.heads, !documents.isEmpty else { return documents }
                    let forged = SignedOperation.sign(.addMember(room: "ops", user: phantom.userNKey, role: .member), by: stranger, parents: heads)
                    return documents + [ControlAPI.OperationDocument(forged)]
                }
            }
            // The node's own views, which a client must not rely on.
            var text = String(decoding: body, as: UTF8.self)
            text = text.replacingOccurrences(of: "\"encrypt\":true", with: "\"encrypt\":false")
            text = text.replacingOccurrences(of: Base64.encode(node.bob.keyExchange.publicKey.bytes),
                                             with: Base64.encode(phantom.keyExchange.publicKey.bytes))
            return Array(text.utf8)
        }
        try await proxy.start()
        let bob = try await node.client(node.bob) { $0.controlPlane = [proxy.url] }
        let members = try await bob.members(of: "ops")
        #expect(members == [node.alice.userNKey, node.bob.userNKey], "no phantom")
        let bobInbox = Inbox(try await bob.join("ops"))
        let aliceViaProxy = try await node.client(node.alice) { $0.controlPlane = [proxy.url] }
        _ = try await aliceViaProxy.join("ops")
        let (tap, frames) = try await RoomIntegrationTests().raw(node, as: node.bob, subject: "rooms.ops")
        try await aliceViaProxy.publish(Array("still secret".utf8), to: "ops")
        #expect(await bobInbox.wait(for: 1) == ["still secret"], "the share was sealed to bob's real key")
        let frame = try #require(await RoomIntegrationTests().next(frames))
        guard case .megolm = try FrameEnvelope(decoding: frame).body else {
            Issue.record("sent without encryption on a node's word")
            return
        }
        await tap.close()
        for client in [alice, bob, aliceViaProxy] { await client.close() }
        await proxy.stop()
        await node.stop()
    }

    /// The node withholds a revocation. With a second control-plane node the
    /// client compares logs before sealing a new session key, learns of it,
    /// seals nothing to the revoked user, and warns that the node is behind.
    @Test func aWithheldRevocationIsFoundOnASecondNode() async throws {
        let node = try await TestNode()
        let admin = try await node.client(node.admin)
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        let proxy = try LyingProxy(upstream: node.controlURL) { _, path, body in
            path == "/v1/log" ? rewriteLog(body) { $0.filter { kind($0) != "user.revoke" } } : body
        }
        try await proxy.start()
        let warnings = NIOLockedValueBox<[String]>([])
        let sender = try await node.client(node.alice) {
            $0.controlPlane = [proxy.url, node.controlURL]
            $0.maximumNodeLag = .zero
            $0.warn = { message in warnings.withLockedValue { $0.append(message) } }
        }
        _ = try await sender.join("ops")
        try await admin.revoke(node.bob.userNKey)
        try await sender.publish(Array("after the revoke".utf8), to: "ops")
        #expect(try node.store.pendingKeyShares(for: node.bob.userNKey).isEmpty, "nothing sealed to the revoked user")
        #expect(try await sender.members(of: "ops") == [node.alice.userNKey])
        #expect(warnings.withLockedValue { $0 }.contains { $0.contains(proxy.url) && $0.contains("behind") })
        for client in [admin, alice, sender] { await client.close() }
        await proxy.stop()
        await node.stop()
    }

    /// Revoking a member of a live room through a real node: every sender
    /// rotates, the revoked member's client cannot read the next frame, and
    /// no node holds a share addressed to it.
    @Test func revokingAMemberOfALiveRoom() async throws {
        let node = try await TestNode()
        let admin = try await node.client(node.admin)
        let (alice, bob, carol) = try await node.roomOfThree()
        let bobInbox = Inbox(try await bob.join("ops")), carolInbox = Inbox(try await carol.join("ops"))
        _ = try await alice.join("ops")
        let (tap, frames) = try await RoomIntegrationTests().raw(node, as: node.carol, subject: "rooms.ops")
        try await alice.publish(Array("before".utf8), to: "ops")
        try await carol.publish(Array("carol before".utf8), to: "ops")
        #expect(await bobInbox.wait(for: 2).count == 2)
        let before = try #require(await RoomIntegrationTests().next(frames))
        _ = await RoomIntegrationTests().next(frames)

        try await admin.revoke(node.bob.userNKey)
        // Every sender learns of it (the node announces it) before its next frame.
        #expect(await eventually { (try? await alice.members(of: "ops")) == [node.alice.userNKey, node.carol.userNKey] })
        try await alice.publish(Array("after".utf8), to: "ops")
        try await carol.publish(Array("carol after".utf8), to: "ops")
        let after = try #require(await RoomIntegrationTests().next(frames))
        let carolAfter = try #require(await RoomIntegrationTests().next(frames))
        #expect(await carolInbox.wait(for: 4).count == 4)
        for (old, new) in [(before, after)] {
            guard case .megolm(let oldID, _) = try FrameEnvelope(decoding: old).body,
                  case .megolm(let newID, _) = try FrameEnvelope(decoding: new).body else {
                Issue.record("not Megolm frames")
                return
            }
            #expect(oldID != newID, "the sender rotated")
        }
        for frame in [after, carolAfter] {
            if case .success = await bob.receive(frame, room: "ops") { Issue.record("the revoked member read a frame sent after its revocation") }
        }
        let stored = try node.store.pendingKeyShares(for: node.bob.userNKey)
        #expect(stored.isEmpty, "no share addressed to the revoked user is stored")
        await tap.close()
        for client in [admin, alice, bob, carol] { await client.close() }
        await node.stop()
    }
}

extension UnibusClient {
    /// Revokes a user (an admin's client), for tests.
    func revoke(_ user: String) async throws { try await submit(.revokeUser(key: user)) }
}

@Suite("The client's verified log", .serialized)
struct VerifiedLogTests {
    /// The root checkpoints the log through a real node: the node drops the
    /// past, a new client starts from the checkpoint, and both agree.
    @Test func aCheckpointThroughTheNodeStartsNewClients() async throws {
        let node = try await TestNode()
        let admin = try await node.client(node.admin)
        let alice = try await node.client(node.alice)
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        try await admin.syncMembership()
        let log = await admin.membershipLog
        let content = log.state.checkpointState(sequence: log.baseSequence + 1, rootChain: log.rootChain)
        try await admin.submit(.checkpoint(content))
        #expect(node.store.operationCount == 1, "the node keeps the checkpoint alone")
        let bob = try await node.client(node.bob)
        let bobLog = await bob.membershipLog
        #expect(bobLog.base != nil && bobLog.count == 1)
        #expect(try await bob.members(of: "ops") == [node.alice.userNKey, node.bob.userNKey])
        // The log goes on after it, for everyone.
        try await alice.addMember(node.carol.userNKey, to: "ops")
        #expect(try await bob.members(of: "ops") == [node.alice.userNKey, node.bob.userNKey, node.carol.userNKey])
        for client in [admin, alice, bob] { await client.close() }
        await node.stop()
    }

    /// With a state directory the verified log survives a restart (0600, in
    /// a 0700 directory); a store that no longer verifies is discarded with
    /// a warning and fetched again, never used.
    @Test func theVerifiedLogIsKeptAndReverified() async throws {
        let node = try await TestNode()
        let directory = NSTemporaryDirectory() + "unibus-client-state-\(UUID().uuidString)"
        let warnings = NIOLockedValueBox<[String]>([])
        func connect() async throws -> UnibusClient {
            try await node.client(node.alice) {
                $0.stateDirectory = directory
                $0.warn = { message in warnings.withLockedValue { $0.append(message) } }
            }
        }
        var alice = try await connect()
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        let digest = await alice.membershipLog.digest
        await alice.close()
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("verified-log-") && $0.hasSuffix(".sqlite3") }
        #expect(files.count == 1)
        // The key store sits beside it, 0600 too.
        let keys = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("keys-") && $0.hasSuffix(".sqlite3") }
        #expect(keys.count == 1)
        #expect(try FileManager.default.attributesOfItem(atPath: directory + "/" + (keys.first ?? ""))[.posixPermissions] as? Int == 0o600)
        let path = directory + "/" + (files.first ?? "")
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        #expect(try FileManager.default.attributesOfItem(atPath: directory)[.posixPermissions] as? Int == 0o700)
        alice = try await connect()
        #expect(await alice.membershipLog.digest == digest)
        await alice.close()
        #expect(warnings.withLockedValue { $0 }.isEmpty)
        // Damage a stored signature: discarded, fetched again from the node.
        let database = try SQLiteDatabase(path: path)
        try database.execute("UPDATE log SET signature = zeroblob(64) WHERE seq = 2")
        alice = try await connect()
        #expect(await alice.membershipLog.digest == digest)
        #expect(warnings.withLockedValue { $0 }.contains { $0.contains("did not verify") })
        await alice.close()
        await node.stop()
    }
}
