import Foundation
import NIOConcurrencyHelpers
import NIOCore
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
        /// Peer id → whether this node opened its active link to that peer
        /// (from the route events; filled for nodes `startCluster` made).
        var links = NIOLockedValueBox<[String: Bool]>([:])
    }

    /// Starts brokers that all dial every route port in `routePorts` (their own included).
    /// If one fails to start, the ones already started are shut down before the error is thrown.
    func startCluster(_ count: Int, root: (Int) -> String = { _ in "" }, name: String = "test",
                      events: NIOLockedValueBox<[String]>? = nil) async throws -> [Node] {
        // A port that was free a moment ago can be taken before its node binds
        // it (by another node's outgoing dial, say): start again on fresh ports.
        var attempt = 1
        while true {
            do {
                return try await startClusterOnce(count, root: root, name: name, events: events)
            } catch where Self.isAddressInUse(error) && attempt < 3 {
                attempt += 1
            }
        }
    }

    /// The broker wraps a failed bind in a `ListenerError` naming the
    /// listener; a bare `IOError` can come from other socket calls.
    static func isAddressInUse(_ error: Error) -> Bool {
        if let listener = error as? ListenerError { return isAddressInUse(listener.underlying) }
        return (error as? IOError)?.errnoCode == EADDRINUSE
    }

    private func startClusterOnce(_ count: Int, root: (Int) -> String, name: String,
                                  events: NIOLockedValueBox<[String]>?) async throws -> [Node] {
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
            // Slow enough that a stalled test machine does not drop links the
            // tests count; nothing here needs pings to notice a dead peer.
            cluster.pingInterval = .seconds(2)
            cluster.maximumBackoff = .milliseconds(200)
            configuration.cluster = cluster
            let broker = Broker(configuration: configuration)
            let links = NIOLockedValueBox<[String: Bool]>([:])
            broker.cluster?.onEvent = { event in
                switch event {
                case .routeUp(let peer, let dialed): links.withLockedValue { $0[peer.serverID] = dialed }
                case .routeDown(let peer, _): links.withLockedValue { $0[peer.serverID] = nil }
                case .refused(_, let reason): events?.withLockedValue { $0.append(reason) }
                case .dialFailed(let url, let reason): events?.withLockedValue { $0.append("dial \(url): \(reason)") }
                case .dialRecovered: break
                }
            }
            do {
                let port = try await broker.start()
                nodes.append(Node(broker: broker, clientPort: port, routePort: routePorts[index], links: links))
            } catch {
                await broker.shutdown()
                await shutdown(nodes)
                throw error
            }
        }
        return nodes
    }

    /// A route that cannot be linked is reported once per reason, not on
    /// every retry (a typo'd port used to be silent).
    @Test func aRouteThatCannotLinkIsReportedOnce() async throws {
        var configuration = BrokerConfiguration()
        configuration.port = 0
        configuration.threads = 1
        var cluster = ClusterConfiguration()
        cluster.port = 0
        cluster.routes = ["route://127.0.0.1:\(freeLoopbackPort())"]   // nothing listens there
        cluster.minimumBackoff = .milliseconds(10)
        cluster.maximumBackoff = .milliseconds(20)
        configuration.cluster = cluster
        let broker = Broker(configuration: configuration)
        let failures = NIOLockedValueBox<[String]>([])
        broker.cluster?.onEvent = { event in
            if case .dialFailed(let url, let reason) = event { failures.withLockedValue { $0.append("\(url) \(reason)") } }
        }
        _ = try await broker.start()
        // Many retries happen at a 10-20 ms pause; wait for the first report, then a while more.
        let deadline = Date().addingTimeInterval(5)
        while failures.withLockedValue({ $0.isEmpty }) && Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .milliseconds(300))   // ~15 more retries: none may be reported again
        let reported = failures.withLockedValue { $0 }
        await broker.shutdown()
        #expect(reported.count == 1, "\(reported)")
        #expect(reported.first?.contains("connection refused") == true, "\(reported)")
    }

    /// Shuts every node down, awaited: each test calls it on every path
    /// (also when it throws), so no broker outlives its test.
    func shutdown(_ nodes: [Node]) async {
        for node in nodes { await node.broker.shutdown() }
    }

    /// Polls `condition` every 10 ms until it holds or `timeout` seconds
    /// pass; callers wrap it in #expect, which records the timeout.
    func waitUntil(_ timeout: Double = 5, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    /// Whether every node has one link to each other node and it is the link
    /// the node with the smaller id opened, as duplicate resolution leaves
    /// it on both ends: from then on any further dial is refused as a
    /// duplicate, and no link opens.
    func meshSettled(_ nodes: [Node]) -> Bool {
        nodes.allSatisfy { node in
            let own = node.broker.serverID
            let links = node.links.withLockedValue { $0 }
            return node.broker.cluster?.peers.count == nodes.count - 1 && nodes.allSatisfy { other in
                let peer = other.broker.serverID
                return peer == own || links[peer] == (own < peer)
            }
        }
    }

    /// Routes whose far node has announced plain interest matching `subject` to `node`.
    func routesInterested(_ node: Node, in subject: String) -> Int {
        node.broker.index.match(subject).routes.count
    }

    /// Members of queue group `queue` for `subject` on `node`: its local
    /// members and one entry per route whose far node has members.
    func queueMembers(_ node: Node, _ subject: String, queue: String) -> Int {
        node.broker.index.match(subject).queues.first { $0.name == queue }?.members.count ?? 0
    }

    func routedOut(_ nodes: [Node]) -> [Int] {
        nodes.map { $0.broker.statistics.routedOut.load(ordering: .relaxed) }
    }

    @Test func threeNodesFormOneMeshAndNeverRelay() async throws {
        let nodes = try await startCluster(3)
        do {
            #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 2 } }, "every node links to both others, not to itself")
            // Both ends of a pair dial; the duplicate is resolved within a redial or two.
            #expect(await waitUntil { meshSettled(nodes) }, "\(nodes.map { $0.links.withLockedValue { $0 } })")
            let opened = nodes.map { $0.broker.statistics.routesOpened.load(ordering: .relaxed) }
            #expect(opened.allSatisfy { $0 <= 4 }, "duplicates resolve without churn: \(opened)")

            let onB = try RawClient(port: nodes[1].clientPort), onC = try RawClient(port: nodes[2].clientPort)
            for client in [onB, onC] {
                client.send("CONNECT {\"verbose\":false}\r\nSUB x.> 1\r\nPING\r\n")
                client.read(until: "PONG")
                client.clear()
            }
            let publisher = try RawClient(port: nodes[0].clientPort)
            publisher.send("CONNECT {\"verbose\":false}\r\nPING\r\n")
            publisher.read(until: "PONG")
            // Interest reaches the publisher's node asynchronously: wait until its index holds both routes.
            #expect(await waitUntil { routesInterested(nodes[0], in: "x.y") == 2 }, "RS+ from both subscribers' nodes")
            let routedBefore = routedOut(nodes)
            publisher.clear()
            for index in 0..<100 { publisher.send("PUB x.y 3\r\n\(String(format: "%03d", index))\r\n") }
            // Every link is FIFO, so x.end reaches each subscriber after all its copies:
            // reading up to it sees them all, with no waiting for stragglers.
            publisher.send("PUB x.end 0\r\n\r\nPING\r\n")
            publisher.read(until: "PONG")
            let atC = onC.read(until: "MSG x.end")
            let atB = onB.read(until: "MSG x.end")
            let countC = atC.components(separatedBy: "MSG x.y ").count - 1
            let countB = atB.components(separatedBy: "MSG x.y ").count - 1
            #expect(countC == 100 && countB == 100, "each subscriber gets one copy: b \(countB), c \(countC)")
            #expect(atC.contains("MSG x.y 1 3\r\n000\r\n"))
            // A route never relays: a relaying node would have counted its forwards
            // before delivering x.end to its own subscriber.
            let forwarded = zip(routedOut(nodes), routedBefore).map { $0 - $1 }
            #expect(forwarded == [202, 0, 0], "one copy per peer from the publisher's node, none relayed: \(forwarded)")

            // Interest removed on both: the publisher's node stops forwarding.
            onB.clear()
            onC.clear()
            onB.send("UNSUB 1\r\nPING\r\n")
            onC.send("UNSUB 1\r\nPING\r\n")
            onB.read(until: "PONG")
            onC.read(until: "PONG")
            #expect(await waitUntil { routesInterested(nodes[0], in: "x.y") == 0 }, "RS- from both subscribers' nodes")
            let routed = nodes[0].broker.statistics.routedOut.load(ordering: .relaxed)
            publisher.clear()
            for _ in 0..<10 { publisher.send("PUB x.y 1\r\nz\r\n") }
            publisher.send("PING\r\n")
            publisher.read(until: "PONG")
            #expect(nodes[0].broker.statistics.routedOut.load(ordering: .relaxed) == routed, "no interest, no forwarding")
            #expect(nodes.map { $0.broker.statistics.routesOpened.load(ordering: .relaxed) } == opened, "links do not flap")
        } catch {
            await shutdown(nodes)
            throw error
        }
        await shutdown(nodes)
    }

    @Test func queueGroupsSpanNodesAndRequestsCrossRoutes() async throws {
        let nodes = try await startCluster(3)
        do {
            // One link per pair from here on, so each link's order is the order of delivery.
            #expect(await waitUntil { meshSettled(nodes) }, "\(nodes.map { $0.links.withLockedValue { $0 } })")
            let workers = try [RawClient(port: nodes[0].clientPort), RawClient(port: nodes[1].clientPort), RawClient(port: nodes[2].clientPort)]
            for worker in workers {
                worker.send("CONNECT {\"verbose\":false}\r\nSUB jobs q 1\r\nSUB done 2\r\nPING\r\n")
                worker.read(until: "PONG")
                worker.clear()
            }
            let publisher = try RawClient(port: nodes[1].clientPort)
            publisher.send("CONNECT {\"verbose\":false}\r\nPING\r\n")
            publisher.read(until: "PONG")
            // The other nodes' members reach the publisher's node as route entries of the group.
            #expect(await waitUntil { queueMembers(nodes[1], "jobs", queue: "q") == 3 && routesInterested(nodes[1], in: "done") == 2 })
            publisher.clear()
            for index in 0..<300 { publisher.send("PUB jobs 3\r\n\(String(format: "%03d", index))\r\n") }
            // `done` follows the jobs on every link (each is FIFO): a worker that has it has all its jobs.
            publisher.send("PUB done 0\r\n\r\nPING\r\n")
            publisher.read(until: "PONG")
            let counts = workers.map { $0.read(until: "MSG done").components(separatedBy: "MSG jobs ").count - 1 }
            #expect(counts.reduce(0, +) == 300, "each job goes to exactly one worker in the cluster: \(counts)")
            #expect(counts.filter { $0 > 0 }.count >= 2, "the group spans nodes: \(counts)")

            // Request on node 0, responder on node 2, reply back across the route.
            let responder = try RawClient(port: nodes[2].clientPort)
            responder.send("CONNECT {\"verbose\":false}\r\nSUB svc 1\r\nPING\r\n")
            responder.read(until: "PONG")
            let requester = try RawClient(port: nodes[0].clientPort)
            requester.send("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.r.* 9\r\nPING\r\n")
            requester.read(until: "PONG")
            // Each side's interest reaches the other's node before the request goes out.
            #expect(await waitUntil { routesInterested(nodes[0], in: "svc") == 1 && routesInterested(nodes[2], in: "_INBOX.r.1") == 1 })
            requester.send("PUB svc _INBOX.r.1 4\r\nping\r\n")
            let request = responder.read(until: "ping\r\n")
            #expect(request.contains("MSG svc 1 _INBOX.r.1 4\r\nping"), "\(request)")
            responder.send("PUB _INBOX.r.1 4\r\npong\r\n")
            #expect(requester.read(until: "pong\r\n").contains("MSG _INBOX.r.1 9 4\r\npong"))
            // Nobody anywhere listens: no-responders, as from a lone server.
            requester.send("PUB nobody _INBOX.r.2 0\r\n\r\n")
            #expect(requester.read(until: "503").contains("HMSG _INBOX.r.2 9 16 16\r\nNATS/1.0 503"))
        } catch {
            await shutdown(nodes)
            throw error
        }
        await shutdown(nodes)
    }

    @Test func linksAcrossClustersOrRootsAreRefused() async throws {
        let refused = NIOLockedValueBox<[String]>([])
        let nodes = try await startCluster(2, root: { "U-root-\($0)" }, events: refused)
        // Nothing below throws, so the shutdown at the end is reached on every path.
        #expect(await waitUntil { refused.withLockedValue { $0 }.contains { $0.contains("cluster root") } },
                "\(refused.withLockedValue { $0 })")
        // The refusal comes in the handshake, before a link can become active: none ever did.
        #expect(nodes.allSatisfy { $0.broker.cluster?.peers.isEmpty == true })
        #expect(nodes.allSatisfy { $0.broker.statistics.routesOpened.load(ordering: .relaxed) == 0 })
        await shutdown(nodes)
    }

    /// Records what the cluster tells its delegate, in order.
    final class LinkRecorder: ClusterDelegate, @unchecked Sendable {
        // @unchecked: `changes` is the only state, behind its own lock.
        let changes = NIOLockedValueBox<[String]>([])
        func routeActivated(_ link: RouteLink) async { changes.withLockedValue { $0.append("up \(link.peer.serverID)") } }
        func received(_ data: ByteBuffer, from link: RouteLink) async {}
        func routeClosed(_ peer: RouteInfo) async { changes.withLockedValue { $0.append("down \(peer.serverID)") } }
    }

    /// The delegate hears of each link change once, in the order it
    /// happened: a peer restarted three times is down, up, down, up, down, up,
    /// each close naming the peer whose activation came before it.
    @Test func linkChangesReachTheDelegateInOrder() async throws {
        var nodes = try await startCluster(2)
        let recorder = LinkRecorder()
        do {
            #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 1 } })
            nodes[0].broker.cluster?.delegate = recorder
            var expected: [String] = []
            var peer = nodes[1].broker.serverID
            for _ in 0..<3 {
                await nodes[1].broker.shutdown()
                expected.append("down \(peer)")
                #expect(await waitUntil { nodes[0].broker.cluster?.peers.isEmpty == true }, "the link goes when the peer goes")
                var configuration = nodes[1].broker.configuration
                configuration.port = 0
                let restarted = Broker(configuration: configuration, nodeKey: Ed25519KeyPair())
                nodes[1] = Node(broker: restarted, clientPort: 0, routePort: nodes[1].routePort)
                let port = try await restarted.start()
                nodes[1] = Node(broker: restarted, clientPort: port, routePort: nodes[1].routePort)
                peer = restarted.serverID
                expected.append("up \(peer)")
                #expect(await waitUntil { nodes[0].broker.cluster?.peers.map(\.serverID) == [peer] }, "the survivor redials")
            }
            // Both nodes dial, and each end settles duplicates on its own: a
            // preferred duplicate can replace the first link (a second "up", no
            // "down"), or the far end can close the link this end kept, which
            // is then "down" and "up" again for the same peer. Those are folded
            // away. The first link's activation may still have been queued when
            // the recorder was set: it is delivered to the recorder, first.
            let first = "up \(expected[0].dropFirst("down ".count))"
            func collapsed() -> [String] {
                var folded: [String] = []
                for change in recorder.changes.withLockedValue({ $0 }) {
                    if change.hasPrefix("up "), change == folded.last { continue }
                    if change.hasPrefix("up "), folded.last == "down " + change.dropFirst("up ".count) {
                        folded.removeLast()
                        continue
                    }
                    folded.append(change)
                }
                return folded.first == first ? Array(folded.dropFirst()) : folded
            }
            #expect(await waitUntil { collapsed() == expected }, "\(recorder.changes.withLockedValue { $0 })")
            // Nothing more comes: no close told twice, none after the fact.
            try await Task.sleep(for: .milliseconds(200))
            #expect(collapsed() == expected, "\(recorder.changes.withLockedValue { $0 })")
        } catch {
            await shutdown(nodes)
            throw error
        }
        await shutdown(nodes)
    }

    @Test func aRestartedPeerIsLinkedAgain() async throws {
        var nodes = try await startCluster(2)
        do {
            #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 1 } })
            let serverKey = Ed25519KeyPair()
            await nodes[1].broker.shutdown()
            #expect(await waitUntil { nodes[0].broker.cluster?.peers.isEmpty == true }, "the link goes when the peer goes")
            var configuration = nodes[1].broker.configuration
            configuration.port = 0
            let restarted = Broker(configuration: configuration, nodeKey: serverKey)
            // In the list before it starts, so the teardown stops it even if starting throws.
            nodes[1] = Node(broker: restarted, clientPort: 0, routePort: nodes[1].routePort)
            let port = try await restarted.start()
            nodes[1] = Node(broker: restarted, clientPort: port, routePort: nodes[1].routePort)
            #expect(await waitUntil { nodes.allSatisfy { $0.broker.cluster?.peers.count == 1 } }, "the survivor redials")
        } catch {
            await shutdown(nodes)
            throw error
        }
        await shutdown(nodes)
    }
}
