import Foundation
import NIOCore
import Testing
import UnibusClient
import UnibusControl
import UnibusNode
import UnibusTestSupport

/// A receiver whose key-share fetch fails is not locked out of the session:
/// the node's control plane that Bob uses goes away while Alice starts a new
/// session (the notice and the frame reach Bob over the data plane, the
/// fetch they trigger finds nobody), and once it is back, the session's next
/// frame fetches again and opens.
@Suite("Key-share fetches", .serialized)
struct KeyShareFetchTests {
    @Test func aFailedFetchDoesNotLockTheSessionOut() async throws {
        let node = try await TestNode()
        // Bob's own door to the same node's control plane, which the test closes and opens.
        let bobControlPort = freeLoopbackPort()
        func openBobsControlPlane() async throws -> Channel {
            try await ControlServer(plane: ControlPlane(node: node.node), group: node.broker.group, tls: nil)
                .start(host: "127.0.0.1", port: bobControlPort)
        }
        var bobsControlPlane = try await openBobsControlPlane()
        let alice = try await node.client(node.alice)
        let bob = try await node.client(node.bob) {
            $0.controlPlane = ["http://127.0.0.1:\(bobControlPort)"]
            $0.keyShareRetryPause = .zero
        }
        try await alice.createRoom(id: "ops", subject: "rooms.ops")
        try await alice.addMember(node.bob.userNKey, to: "ops")
        _ = try await alice.join("ops")
        let inbox = Inbox(try await bob.join("ops"))

        try await bobsControlPlane.close()
        try await alice.publish(Array("while away".utf8), to: "ops")
        let refused = await eventually { await bob.rejections[.unknownSession] == 1 }
        let rejections = await bob.rejections
        #expect(refused, "the frame reached Bob and could not be opened: \(rejections)")

        bobsControlPlane = try await openBobsControlPlane()
        try await alice.publish(Array("back".utf8), to: "ops")
        #expect(await inbox.wait(for: 1) == ["back"], "the session's next frame fetched the share again and opened")
        #expect(try node.store.pendingKeyShares(for: node.bob.userNKey).isEmpty, "and acknowledged it")

        await alice.close()
        await bob.close()
        try? await bobsControlPlane.close()
        await node.stop()
    }
}
