import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import UnibusBroker
import UnibusCrypto
import UnibusTestSupport

/// Brokers linked by routes in one process (plain TCP on loopback: the
/// route TLS is exercised by the process-level cluster test).
@Suite("Cluster routes", .serialized)
struct ClusterTests {
    struct Node {
        let broker: Broker
        let clientPort: Int
        let routePort: Int
    }

    /// Starts brokers that all dial every route port in `routePorts` (their own included).
    func startCluster(_ count: Int, root: (Int) -> String = { _ in "" }, name: String = "test",
                      events: NIOLockedValueBox<[String]>? = nil) async throws -> [Node] {
        let routePorts = (0..<count).map { _ in freeLoopbackPort() }
        var nodes: [Node] = []
        for index in 0..<count {
            var configuration = BrokerConfiguration()
            configuration.port = 0
            configuration.threads = 1
            var cluster = ClusterConfiguration()
            cluster.port = routePorts[index]
            cluster.name = name
            cluster.root = root(index)
            cluster.routes = routePorts.map { "route://127.0.0.1:\($0)" }
            cluster.pingInterval = .milliseconds(200)
            cluster.maximumBackoff = .milliseconds(200)
            configuration.cluster = cluster
            let broker = Broker(configuration: configuration)
            if let events {
                broker.cluster?.onEvent = { event in
                    if case .refused(_, let reason) = event { events.withLockedValue { $0.append(reason) } }
                }
            }
            let port = try await broker.start()
            nodes.append(Node(broker: broker, clientPort: port, routePort: routePorts[index]))
        }
        return nodes
    }

    func waitUntil(_ timeout: Double = 5, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    @Test func threeNodesFormOneMeshAndNeverRelay() async throws {
        let nodes = try await startCluster(3)
        defer { Task { for node in nodes { await node.broker.shutdown() } } }
        #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 2 } }, "every node links to both others, not to itself")
        // Both ends of a pair dial; the duplicate is resolved within a redial or two.
        try await Task.sleep(for: .milliseconds(500))
        let opened = nodes.map { $0.broker.statistics.routesOpened.load(ordering: .relaxed) }
        #expect(opened.allSatisfy { $0 <= 4 }, "duplicates resolve without churn: \(opened)")

        let onB = try RawClient(port: nodes[1].clientPort), onC = try RawClient(port: nodes[2].clientPort)
        for client in [onB, onC] {
            client.send("CONNECT {\"verbose\":false}\r\nSUB x.> 1\r\nPING\r\n")
            client.read(until: "PONG")
            client.clear()
        }
        let publisher = try RawClient(port: nodes[0].clientPort)
        publisher.send("CONNECT {\"verbose\":false}\r\n")
        // Interest reaches the publisher's node asynchronously: probe until it forwards.
        #expect(await waitUntil {
            publisher.send("PUB x.probe 1\r\np\r\nPING\r\n")
            publisher.read(until: "PONG", timeout: 0.2)
            return onC.read(until: "MSG x.probe", timeout: 0.05).contains("MSG x.probe")
                && onB.read(until: "MSG x.probe", timeout: 0.05).contains("MSG x.probe")
        })
        try await Task.sleep(for: .milliseconds(100))
        onB.clear()
        onC.clear()
        for index in 0..<100 { publisher.send("PUB x.y 3\r\n\(String(format: "%03d", index))\r\n") }
        publisher.send("PING\r\n")
        publisher.read(until: "PONG")
        let atC = onC.read(until: "099\r\n")
        let atB = onB.read(until: "099\r\n")
        try await Task.sleep(for: .milliseconds(200))
        let countC = onC.read(timeout: 0.1).components(separatedBy: "MSG x.y ").count - 1
        let countB = onB.read(timeout: 0.1).components(separatedBy: "MSG x.y ").count - 1
        #expect(countC == 100 && countB == 100, "each subscriber gets one copy (a route never relays): b \(countB), c \(countC)")
        #expect(atC.contains("MSG x.y 1 3\r\n000\r\n"))
        _ = atB

        // Interest removed on both: the publisher's node stops forwarding.
        onB.send("UNSUB 1\r\nPING\r\n")
        onC.send("UNSUB 1\r\nPING\r\n")
        onB.read(until: "PONG")
        onC.read(until: "PONG")
        try await Task.sleep(for: .milliseconds(200))
        let routed = nodes[0].broker.statistics.routedOut.load(ordering: .relaxed)
        for _ in 0..<10 { publisher.send("PUB x.y 1\r\nz\r\n") }
        publisher.send("PING\r\n")
        publisher.read(until: "PONG")
        #expect(nodes[0].broker.statistics.routedOut.load(ordering: .relaxed) == routed, "no interest, no forwarding")
        #expect(nodes.map { $0.broker.statistics.routesOpened.load(ordering: .relaxed) } == opened, "links do not flap")
    }

    @Test func queueGroupsSpanNodesAndRequestsCrossRoutes() async throws {
        let nodes = try await startCluster(3)
        defer { Task { for node in nodes { await node.broker.shutdown() } } }
        #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 2 } })
        let workers = try [RawClient(port: nodes[0].clientPort), RawClient(port: nodes[1].clientPort), RawClient(port: nodes[2].clientPort)]
        for worker in workers {
            worker.send("CONNECT {\"verbose\":false}\r\nSUB jobs q 1\r\nPING\r\n")
            worker.read(until: "PONG")
            worker.clear()
        }
        let publisher = try RawClient(port: nodes[1].clientPort)
        publisher.send("CONNECT {\"verbose\":false}\r\nPING\r\n")
        publisher.read(until: "PONG")
        try await Task.sleep(for: .milliseconds(300))
        for index in 0..<300 { publisher.send("PUB jobs 3\r\n\(String(format: "%03d", index))\r\n") }
        publisher.send("PING\r\n")
        publisher.read(until: "PONG")
        try await Task.sleep(for: .milliseconds(300))
        let counts = workers.map { $0.read(timeout: 0.2).components(separatedBy: "MSG jobs ").count - 1 }
        #expect(counts.reduce(0, +) == 300, "each job goes to exactly one worker in the cluster: \(counts)")
        #expect(counts.filter { $0 > 0 }.count >= 2, "the group spans nodes: \(counts)")

        // Request on node 0, responder on node 2, reply back across the route.
        let responder = try RawClient(port: nodes[2].clientPort)
        responder.send("CONNECT {\"verbose\":false}\r\nSUB svc 1\r\nPING\r\n")
        responder.read(until: "PONG")
        let requester = try RawClient(port: nodes[0].clientPort)
        requester.send("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.r.* 9\r\nPING\r\n")
        requester.read(until: "PONG")
        try await Task.sleep(for: .milliseconds(300))
        requester.send("PUB svc _INBOX.r.1 4\r\nping\r\n")
        let request = responder.read(until: "ping\r\n")
        #expect(request.contains("MSG svc 1 _INBOX.r.1 4\r\nping"), "\(request)")
        responder.send("PUB _INBOX.r.1 4\r\npong\r\n")
        #expect(requester.read(until: "pong\r\n").contains("MSG _INBOX.r.1 9 4\r\npong"))
        // Nobody anywhere listens: no-responders, as from a lone server.
        requester.send("PUB nobody _INBOX.r.2 0\r\n\r\n")
        #expect(requester.read(until: "503").contains("HMSG _INBOX.r.2 9 16 16\r\nNATS/1.0 503"))
    }

    @Test func linksAcrossClustersOrRootsAreRefused() async throws {
        let refused = NIOLockedValueBox<[String]>([])
        let nodes = try await startCluster(2, root: { "U-root-\($0)" }, events: refused)
        defer { Task { for node in nodes { await node.broker.shutdown() } } }
        try await Task.sleep(for: .milliseconds(500))
        #expect(nodes.allSatisfy { $0.broker.cluster?.peers.isEmpty == true })
        #expect(refused.withLockedValue { $0 }.contains { $0.contains("cluster root") })
    }

    @Test func aRestartedPeerIsLinkedAgain() async throws {
        var nodes = try await startCluster(2)
        #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 1 } })
        let serverKey = Ed25519KeyPair()
        await nodes[1].broker.shutdown()
        #expect(await waitUntil { nodes[0].broker.cluster?.peers.isEmpty == true }, "the link goes when the peer goes")
        var configuration = nodes[1].broker.configuration
        configuration.port = 0
        let restarted = Broker(configuration: configuration, nodeKey: serverKey)
        _ = try await restarted.start()
        nodes[1] = Node(broker: restarted, clientPort: restarted.port ?? 0, routePort: nodes[1].routePort)
        #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 1 } }, "the survivor redials")
        for node in nodes { await node.broker.shutdown() }
    }
}
