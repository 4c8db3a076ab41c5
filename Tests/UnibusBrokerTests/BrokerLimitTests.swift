import Foundation
import NIOCore
import Testing
@testable import UnibusBroker
import UnibusCrypto
import UnibusTestSupport

/// Each limit's outcome, through a real broker on loopback and a raw socket.
@Suite("Broker limits and authentication", .serialized)
struct BrokerLimitTests {
    @Test func maxPayloadIsAdvertisedAndEnforced() async throws {
        try await withBroker({ $0.maxPayload = 100 }) { _, port in
            let client = try RawClient(port: port)
            #expect(client.read(until: "\r\n").contains("\"max_payload\":100"))
            client.send("PUB a 101\r\n")
            let reply = client.read(until: "Violation")
            #expect(reply.contains("-ERR 'Maximum Payload Violation'"))
            client.read(timeout: 5)
            #expect(client.closedByServer)
        }
    }

    @Test func staleClientsAreDroppedAfterUnansweredPings() async throws {
        try await withBroker({ $0.pingInterval = .milliseconds(100); $0.maxPingsOutstanding = 2 }) { broker, port in
            let client = try RawClient(port: port)
            client.send("CONNECT {\"verbose\":false}\r\n")
            let text = client.read(until: "Stale", timeout: 3)
            #expect(text.components(separatedBy: "PING\r\n").count - 1 == 2)
            #expect(text.contains("-ERR 'Stale Connection'"))
            client.read(timeout: 5)
            #expect(client.closedByServer)
            #expect(broker.statistics.staleConnections.load(ordering: .relaxed) == 1)
        }
    }

    @Test func answeredPingsKeepAClient() async throws {
        // Each PONG must arrive within one interval: long enough that a
        // loaded machine's scheduling is not what the test measures.
        try await withBroker({ $0.pingInterval = .milliseconds(500); $0.maxPingsOutstanding = 1 }) { _, port in
            let client = try RawClient(port: port)
            client.send("CONNECT {\"verbose\":false}\r\n")
            for round in 0..<4 {
                #expect(client.read(until: "PING\r\n", timeout: 5).contains("PING\r\n"), "round \(round): no PING")
                client.clear()
                client.send("PONG\r\n")
            }
            #expect(!client.closedByServer)
        }
    }

    /// A subscriber that stops reading is closed and counted, and the broker
    /// keeps at most the configured bytes for it.
    @Test func slowConsumerByPendingBytes() async throws {
        try await withBroker({ $0.maxPendingBytes = 64 * 1024; $0.maxPayload = 1024 * 1024 }) { broker, port in
            let subscriber = try RawClient(port: port)
            subscriber.send("CONNECT {\"verbose\":false}\r\nSUB big 1\r\nPING\r\n")
            subscriber.read(until: "PONG")
            let publisher = try RawClient(port: port)
            publisher.send("CONNECT {\"verbose\":false}\r\nPUB big 100000\r\n" + String(repeating: "x", count: 100_000) + "\r\nPING\r\n")
            publisher.read(until: "PONG")
            // Wait for the condition (bounded), not for a fixed time.
            let deadline = Date().addingTimeInterval(5)
            while broker.statistics.slowConsumers.load(ordering: .relaxed) == 0 && Date() < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(broker.statistics.slowConsumers.load(ordering: .relaxed) == 1)
            subscriber.read(timeout: 1)
            #expect(subscriber.closedByServer)
            #expect(!publisher.closedByServer)
        }
    }

    @Test func slowConsumerByWriteDeadline() async throws {
        try await withBroker({ $0.writeDeadline = .milliseconds(300); $0.maxPendingBytes = 8 * 1024 * 1024 }) { broker, port in
            let subscriber = try RawClient(port: port)
            subscriber.setReceiveBuffer(4096)
            subscriber.send("CONNECT {\"verbose\":false}\r\nSUB s 1\r\nPING\r\n")
            subscriber.read(until: "PONG")
            let publisher = try RawClient(port: port)
            publisher.send("CONNECT {\"verbose\":false}\r\n")
            let payload = String(repeating: "y", count: 8000)
            // More than the kernel buffers on both sides plus the stall threshold (sends block while stalled).
            for _ in 0..<1500 { publisher.send("PUB s 8000\r\n\(payload)\r\n") }
            // The subscriber never reads; within a few deadlines it must be gone.
            var waited = 0
            while broker.statistics.slowConsumers.load(ordering: .relaxed) == 0 && waited < 50 {
                try await Task.sleep(for: .milliseconds(100))
                waited += 1
            }
            #expect(broker.statistics.slowConsumers.load(ordering: .relaxed) == 1)
            // The publisher was stalled, not dropped, and works again.
            publisher.send("PING\r\n")
            #expect(publisher.read(until: "PONG", timeout: 3).contains("PONG"))
        }
    }

    @Test func maxSubscriptionsKeepsTheConnection() async throws {
        try await withBroker({ $0.maxSubscriptions = 2 }) { _, port in
            let client = try RawClient(port: port)
            client.send("CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n")
            let text = client.read(until: "PONG")
            #expect(text.contains("-ERR 'maximum subscriptions exceeded'"))
            #expect(!client.closedByServer)
        }
    }

    @Test func gracefulShutdownFlushesQueuedMessages() async throws {
        var configuration = BrokerConfiguration()
        configuration.port = 0
        let broker = Broker(configuration: configuration)
        let port = try await broker.start()
        let subscriber = try RawClient(port: port)
        subscriber.send("CONNECT {\"verbose\":false}\r\nSUB bye 1\r\nPING\r\n")
        subscriber.read(until: "PONG")
        let publisher = try RawClient(port: port)
        publisher.send("CONNECT {\"verbose\":false}\r\nPUB bye 4\r\nlast\r\nPING\r\n")
        publisher.read(until: "PONG")
        await broker.shutdown()
        let text = subscriber.read(timeout: 1)
        #expect(text.contains("MSG bye 1 4\r\nlast\r\n"))
        #expect(subscriber.closedByServer)
        #expect((try? RawClient(port: port)) == nil, "the listener is closed")
    }
}

@Suite("Broker nkey authentication", .serialized)
struct BrokerAuthenticationTests {
    private func nonce(from info: String) throws -> String {
        let found = UnibusTestSupport.nonce(fromInfo: info)
        return try #require(found)
    }

    private func connect(_ client: RawClient, as identity: Identity, signature: (String) -> String? = { _ in nil }) throws {
        let info = client.read(until: "\r\n")
        #expect(info.contains("\"auth_required\":true"))
        let nonce = try nonce(from: info)
        let sig = signature(nonce) ?? Base64.encode(identity.sign(Array(nonce.utf8)), alphabet: .url)
        client.clear()
        client.send("CONNECT {\"verbose\":false,\"nkey\":\"\(identity.userNKey)\",\"sig\":\"\(sig)\"}\r\nPING\r\n")
    }

    @Test func allowedKeyConnectsOthersAreRefused() async throws {
        let member = Identity()
        let allowlist = StaticAllowlist(users: [member.userNKey: .everything])
        try await withBroker({ $0.authorizer = allowlist }) { broker, port in
            let good = try RawClient(port: port)
            try connect(good, as: member)
            #expect(good.read(until: "PONG").contains("PONG"))

            let forged = try RawClient(port: port)
            try connect(forged, as: member) { _ in Base64.encode(member.sign(Array("another nonce".utf8)), alphabet: .url) }
            #expect(forged.read(until: "Violation").contains("-ERR 'Authorization Violation'"))
            forged.read(timeout: 5)
            #expect(forged.closedByServer)

            let stranger = try RawClient(port: port)
            try connect(stranger, as: Identity())
            #expect(stranger.read(until: "Violation").contains("-ERR 'Authorization Violation'"))

            let early = try RawClient(port: port)
            early.read(until: "\r\n")
            early.send("SUB x 1\r\n")
            #expect(early.read(until: "Violation").contains("-ERR 'Authorization Violation'"))
            #expect(broker.statistics.authorizationFailureTotal == 3)
            #expect(broker.statistics.authorizationFailuresByReason[.badSignature]?.load(ordering: .relaxed) == 1)
            #expect(broker.statistics.authorizationFailuresByReason[.notAllowed]?.load(ordering: .relaxed) == 1)
            #expect(broker.statistics.authorizationFailuresByReason[.noCredentials]?.load(ordering: .relaxed) == 1)
        }
    }

    @Test func clientsThatNeverConnectTimeOut() async throws {
        let allowlist = StaticAllowlist(users: [:])
        try await withBroker({ $0.authorizer = allowlist; $0.authTimeout = .milliseconds(200) }) { _, port in
            let client = try RawClient(port: port)
            #expect(client.read(until: "Timeout", timeout: 2).contains("-ERR 'Authentication Timeout'"))
        }
    }

    /// Permissions follow the authorizer on open connections; removal closes.
    @Test func permissionsChangeLiveAndRevocationDisconnects() async throws {
        let member = Identity()
        let narrow = Permissions(publish: SubjectPermission(allow: ["room.a"]), subscribe: SubjectPermission(allow: ["room.a"]))
        let allowlist = StaticAllowlist(users: [member.userNKey: narrow])
        try await withBroker({ $0.authorizer = allowlist }) { broker, port in
            let client = try RawClient(port: port)
            try connect(client, as: member)
            client.read(until: "PONG")
            client.clear()
            client.send("PUB room.b 1\r\nx\r\nSUB room.b 1\r\nPING\r\n")
            let denied = client.read(until: "PONG")
            #expect(denied.contains("-ERR 'Permissions Violation for Publish to \"room.b\"'"))
            #expect(denied.contains("-ERR 'Permissions Violation for Subscription to \"room.b\"'"))

            allowlist.update([member.userNKey: Permissions(publish: SubjectPermission(allow: ["room.a", "room.b"]),
                                                           subscribe: SubjectPermission(allow: ["room.a", "room.b"]))])
            await broker.reauthorize()
            client.clear()
            client.send("SUB room.b 2\r\nPUB room.b 2\r\nok\r\nPING\r\n")
            let granted = client.read(until: "PONG")
            #expect(granted.contains("MSG room.b 2 2\r\nok\r\n"), "\(granted)")
            #expect(!granted.contains("-ERR"))

            client.clear()
            await broker.disconnect(userNKey: member.userNKey)
            // The close is awaited as a condition (bounded), not timed: a
            // loaded CI machine must not turn a latency into a failure.
            #expect(client.read(until: "Violation", timeout: 5).contains("-ERR 'Authorization Violation'"))
            for _ in 0..<50 where !client.closedByServer { client.read(timeout: 0.1) }
            #expect(client.closedByServer)
        }
    }

    @Test func natsPySignatureEncodingIsAccepted() {
        let signature = [UInt8](repeating: 7, count: 64)
        #expect(BrokerConnection.decodeSignature(Base64.encode(signature, alphabet: .url)) == signature)
        #expect(BrokerConnection.decodeSignature(Data(signature).base64EncodedString()) == signature)
        #expect(BrokerConnection.decodeSignature("short") == nil)
    }
}

/// Attacks on the broker from a raw socket: each asserts the refusal, that
/// the attacker got nothing, and that the broker still serves.
@Suite("Broker under attack", .serialized)
struct BrokerAttackTests {
    private func connect(_ client: RawClient, as identity: Identity) throws {
        try client.authenticate(as: identity)
        #expect(client.read(until: "PONG").contains("PONG"))
        client.clear()
    }

    private func stillServes(_ port: Int, as identity: Identity) throws {
        let probe = try RawClient(port: port)
        try connect(probe, as: identity)
        probe.send("SUB alive 1\r\nPUB alive 2\r\nok\r\nPING\r\n")
        #expect(probe.read(until: "PONG").contains("MSG alive 1 2\r\nok\r\n"))
    }

    /// A second CONNECT never switches identity: the connection is closed.
    @Test func aSecondConnectCloses() async throws {
        let member = Identity(), other = Identity()
        let allowlist = StaticAllowlist(users: [member.userNKey: .everything, other.userNKey: .everything])
        try await withBroker({ $0.authorizer = allowlist }) { broker, port in
            let client = try RawClient(port: port)
            try connect(client, as: member)
            client.send("CONNECT {\"verbose\":false,\"nkey\":\"\(other.userNKey)\",\"sig\":\"AAAA\"}\r\nPING\r\n")
            #expect(client.read(until: "Violation").contains("-ERR 'Authorization Violation'"))
            client.read(timeout: 5)
            #expect(client.closedByServer)
            try stillServes(port, as: member)
        }
    }

    /// Before CONNECT a socket may hold a few KiB, never a max_payload PUB.
    @Test func unauthenticatedBytesAreBounded() async throws {
        let member = Identity()
        let allowlist = StaticAllowlist(users: [member.userNKey: .everything])
        try await withBroker({ $0.authorizer = allowlist; $0.maxPreAuthBytes = 4096 }) { broker, port in
            let client = try RawClient(port: port)
            client.read(until: "\r\n")
            client.send("PUB x 100000\r\n" + String(repeating: "y", count: 20_000))
            #expect(client.read(until: "Violation").contains("-ERR 'Authorization Violation'"))
            client.read(timeout: 5)
            #expect(client.closedByServer)
            #expect(broker.statistics.authorizationFailuresByReason[.noCredentials]?.load(ordering: .relaxed) == 1)
            try stillServes(port, as: member)
        }
    }

    /// Deny rules hold at delivery: `a.b.*` allowed by `a.>` does not get
    /// `a.b.c` when `a.*.c` is denied (the subscription itself is allowed).
    @Test func denyRulesHoldAtDelivery() async throws {
        let reader = Identity(), writer = Identity()
        let allowlist = StaticAllowlist(users: [reader.userNKey: Permissions(subscribe: SubjectPermission(allow: ["a.>"], deny: ["a.*.c"])),
                                                writer.userNKey: .everything])
        try await withBroker({ $0.authorizer = allowlist }) { _, port in
            let subscriber = try RawClient(port: port)
            try connect(subscriber, as: reader)
            subscriber.send("SUB a.b.* 1\r\nSUB a.> 2\r\nPING\r\n")
            #expect(!subscriber.read(until: "PONG").contains("-ERR"))
            subscriber.clear()
            let publisher = try RawClient(port: port)
            try connect(publisher, as: writer)
            publisher.send("PUB a.b.c 6\r\nsecret\r\nPUB a.b.d 4\r\nopen\r\nPING\r\n")
            publisher.read(until: "PONG")
            subscriber.send("PING\r\n")
            let got = subscriber.read(until: "PONG")
            #expect(!got.contains("secret"), "\(got)")
            #expect(got.contains("MSG a.b.d 1 4\r\nopen\r\n"))
            #expect(got.contains("MSG a.b.d 2 4\r\nopen\r\n"))
        }
    }

    /// allow_responses: a user may answer a request it received, once; it may
    /// not publish into another user's inbox otherwise.
    @Test func repliesAreAllowedOnceAndOnlyToRequestsReceived() async throws {
        let requester = Identity(), responder = Identity()
        let allowlist = StaticAllowlist(users: [
            requester.userNKey: Permissions(publish: SubjectPermission(allow: ["svc"]), subscribe: SubjectPermission(allow: ["_INBOX.r.>"])),
            responder.userNKey: Permissions(publish: SubjectPermission(allow: ["nothing"]), subscribe: SubjectPermission(allow: ["svc"]),
                                            responses: .standard),
        ])
        try await withBroker({ $0.authorizer = allowlist }) { _, port in
            let server = try RawClient(port: port)
            try connect(server, as: responder)
            server.send("SUB svc 1\r\nPUB _INBOX.r.1 6\r\nforged\r\nPING\r\n")
            #expect(server.read(until: "PONG").contains("-ERR 'Permissions Violation for Publish to \"_INBOX.r.1\"'"))
            server.clear()
            let client = try RawClient(port: port)
            try connect(client, as: requester)
            client.send("SUB _INBOX.r.> 9\r\nPUB svc _INBOX.r.2 3\r\nask\r\nPING\r\n")
            client.read(until: "PONG")
            #expect(server.read(until: "ask").contains("MSG svc 1 _INBOX.r.2 3"))
            server.clear()
            server.send("PUB _INBOX.r.2 6\r\nanswer\r\nPUB _INBOX.r.2 5\r\nagain\r\nPING\r\n")
            #expect(server.read(until: "PONG").contains("-ERR 'Permissions Violation for Publish to \"_INBOX.r.2\"'"))
            client.clear()
            client.send("PING\r\n")
            let replies = client.read(until: "PONG")
            #expect(replies.contains("answer"))
            #expect(!replies.contains("again"))
            #expect(!replies.contains("forged"))
        }
    }

    /// Every connection object is released after close: 1,000 connect/close
    /// cycles (half failing authentication) leave none alive.
    @Test func closedConnectionsAreReleased() async throws {
        let member = Identity()
        let allowlist = StaticAllowlist(users: [member.userNKey: .everything])
        try await withBroker({ $0.authorizer = allowlist }) { broker, port in
            for cycle in 0..<1000 {
                let client = try RawClient(port: port)
                let info = client.read(until: "\r\n")
                if cycle % 2 == 0, let nonce = UnibusTestSupport.nonce(fromInfo: info) {
                    let sig = Base64.encode(member.sign(Array(nonce.utf8)), alphabet: .url)
                    client.send("CONNECT {\"verbose\":false,\"nkey\":\"\(member.userNKey)\",\"sig\":\"\(sig)\"}\r\nSUB x 1\r\nPING\r\n")
                    client.read(until: "PONG")
                } else {
                    client.send("CONNECT {\"verbose\":false,\"nkey\":\"\(member.userNKey)\",\"sig\":\"AAAA\"}\r\n")
                    client.read(until: "Violation")
                }
                // The client's socket closes as it goes out of scope.
            }
            let deadline = Date().addingTimeInterval(10)
            while broker.statistics.liveConnectionObjects.load(ordering: .relaxed) > 0 && Date() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(broker.statistics.liveConnectionObjects.load(ordering: .relaxed) == 0)
            #expect(broker.connectionCount == 0)
        }
    }
}
