import ArgumentParser
import Foundation
import UnibusClient
import UnibusCrypto
import UnibusMembership
import UnibusWire

/// Options of the commands that act as a peer on the bus.
struct PeerOptions: ParsableArguments {
    @Option(name: .long, help: "Your identity file (loaded, never created).")
    var identity: String

    @Option(name: .long, help: "A data-plane seed, nats://HOST:PORT or tls://HOST:PORT (repeat for a seed list).")
    var server: [String] = ["nats://127.0.0.1:4222"]

    @Option(name: .long, help: "A control-plane seed, https://HOST:PORT or http://127.0.0.1:PORT (repeat for a seed list).")
    var node: [String] = ["http://127.0.0.1:4280"]

    @Option(name: .long, help: "The CA certificate both planes' certificates must chain to (required for TLS).")
    var ca: String?

    func connect(name: String) async throws -> UnibusClient {
        var configuration = UnibusClient.Configuration(identity: try loadIdentity(identity), dataPlane: server, controlPlane: node, caPath: ca)
        configuration.name = name
        do {
            return try await UnibusClient.connect(configuration)
        } catch {
            throw CLIError("\(error)")
        }
    }
}

/// A random suffix for ephemeral room ids and subjects.
func randomSuffix() -> String { Hex.encode(Sodium.randomNonce(count: 6)) }

func format(_ rejections: [FrameRejection: Int]) -> String {
    rejections.isEmpty ? "none" : rejections.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue)=\($0.value)" }.joined(separator: " ")
}

/// `unibus check`: end-to-end health of the bus as a real peer sees it.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Publish through an ephemeral encrypted room and verify every message comes back decrypted.",
        discussion: """
        golden: publish --count messages, expect all of them back, decrypted and authenticated; exit 1 naming what is missing.
        loop:   publish a counter every --interval for --duration, print a line per second and a summary (sent, received,
                lost, duplicates, nodes attached to, failover). Keeps running across node restarts and failovers.
        """)

    enum Mode: String, ExpressibleByArgument, CaseIterable { case golden, loop }

    @OptionGroup var peer: PeerOptions
    @Option(name: .long, help: "golden or loop.") var mode: Mode = .golden
    @Option(name: .long, help: "Messages to publish (golden).") var count = 20
    @Option(name: .long, help: "Seconds to wait for them (golden).") var timeout: Double = 10
    @Option(name: .long, help: "Milliseconds between messages (loop).") var interval: Double = 100
    @Option(name: .long, help: "Seconds to run (loop).") var duration: Double = 10

    func run() async throws {
        let client = try await peer.connect(name: "unibus-check")
        let suffix = randomSuffix()
        let room = "check-\(suffix)"
        let messages: RoomMessages
        do {
            try await client.createRoom(id: room, subject: "unibus.check.\(suffix)")
            messages = try await client.join(room)
        } catch {
            await client.close()
            throw CLIError("cannot set up the check room: \(error)")
        }
        let tally = Tally()
        let receiver = Task {
            for await frame in messages {
                guard frame.protection == .encrypted, let text = String(validating: frame.body, as: UTF8.self),
                      let number = Int(text.split(separator: " ").last ?? "") else { continue }
                await tally.received(number)
            }
        }
        defer { receiver.cancel() }
        let outcome: Result<Void, CLIError>
        switch mode {
        case .golden: outcome = await golden(client, room: room, tally: tally)
        case .loop: outcome = await loop(client, room: room, tally: tally)
        }
        _ = try? await client.archiveRoom(room)   // the room was ephemeral
        await client.close()
        try outcome.get()
    }

    private func golden(_ client: UnibusClient, room: String, tally: Tally) async -> Result<Void, CLIError> {
        let started = Date()
        for number in 1...max(1, count) {
            do {
                try await client.publish(Array("unibus check \(number)".utf8), to: room, contentType: "text/plain")
            } catch {
                return .failure(CLIError("publish #\(number) failed: \(error)"))
            }
        }
        let deadline = started.addingTimeInterval(timeout)
        while await tally.distinct < count && Date() < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        let received = await tally.seen
        let missing = (1...max(1, count)).filter { !received.contains($0) }
        let rejections = await client.rejections
        let elapsed = Date().timeIntervalSince(started)
        print("check golden: room \(room) via \(client.connection.currentEndpoint?.description ?? "?"): sent \(count), received \(count - missing.count) "
              + "decrypted in \(String(format: "%.3f", elapsed)) s; rejected: \(format(rejections))")
        guard missing.isEmpty else {
            let shown = missing.prefix(20).map(String.init).joined(separator: ", ")
            return .failure(CLIError("missing \(missing.count) of \(count) messages after \(timeout) s: #\(shown)\(missing.count > 20 ? ", …" : "")"))
        }
        guard rejections.isEmpty else { return .failure(CLIError("frames were rejected: \(format(rejections))")) }
        print("check golden: OK")
        return .success(())
    }

    private func loop(_ client: UnibusClient, room: String, tally: Tally) async -> Result<Void, CLIError> {
        let started = Date()
        var sent = 0, failedPublishes = 0, lastStatus = "ok"
        var firstFailure: String?
        var nodes: [String] = []
        var nextLine = started.addingTimeInterval(1)
        var killNoticed: Date?
        var firstAfterFailover: Double?
        var receivedAtKill = 0
        let step = max(1, interval) / 1000
        while Date().timeIntervalSince(started) < duration {
            let attached = client.connection.currentEndpoint?.description
            if let attached, nodes.last != attached { nodes.append(attached) }
            if attached == nil, killNoticed == nil {
                killNoticed = Date()
                receivedAtKill = await tally.total
            }
            if let noticed = killNoticed, firstAfterFailover == nil, await tally.total > receivedAtKill {
                firstAfterFailover = Date().timeIntervalSince(noticed)
            }
            sent += 1
            do {
                try await client.publish(Array("unibus check \(sent)".utf8), to: room, contentType: "text/plain")
                lastStatus = attached == nil ? "buffered" : "ok"
            } catch {
                failedPublishes += 1
                lastStatus = "failed: \(error)"
                if firstFailure == nil { firstFailure = "\(error)" }
            }
            if Date() >= nextLine {
                let received = await tally.distinct
                print(String(format: "t=%5.1fs sent=%d received=%d node=%@ publish=%@", Date().timeIntervalSince(started), sent, received,
                             attached ?? "(reconnecting)", lastStatus))
                nextLine = nextLine.addingTimeInterval(1)
            }
            try? await Task.sleep(for: .seconds(step))
        }
        // Let the last messages arrive.
        let settle = Date().addingTimeInterval(2)
        while await tally.distinct < sent - failedPublishes && Date() < settle { try? await Task.sleep(for: .milliseconds(10)) }
        let received = await tally.distinct, duplicates = await tally.duplicates
        let lost = sent - failedPublishes - received
        let reconnects = client.connection.reconnectCount
        var summary = "check loop: sent=\(sent) received=\(received) lost=\(lost) duplicates=\(duplicates) failed-publishes=\(failedPublishes) "
            + "reconnects=\(reconnects) nodes=\(nodes.joined(separator: ","))"
        if reconnects > 0 {
            summary += " failover observed"
            if let firstAfterFailover { summary += String(format: " first-message-after-disconnect=%.1fms", firstAfterFailover * 1000) }
        }
        summary += " rejected: \(format(await client.rejections))"
        print(summary)
        if let firstFailure { print("check loop: first failed publish: \(firstFailure)") }
        guard received > 0 else { return .failure(CLIError("nothing was received")) }
        if let killNoticed, await tally.lastArrival ?? .distantPast < killNoticed {
            return .failure(CLIError(reconnects == 0 ? "the connection was lost and never came back" : "nothing was received after the connection was lost"))
        }
        return .success(())
    }
}

/// Counts what the check received.
actor Tally {
    private(set) var seen: Set<Int> = []
    private(set) var duplicates = 0
    private(set) var total = 0
    private(set) var lastArrival: Date?

    func received(_ number: Int) {
        total += 1
        lastArrival = Date()
        if !seen.insert(number).inserted { duplicates += 1 }
    }

    var distinct: Int { seen.count }
}

/// `unibus demo`: two peers in an encrypted room on a local node, and what a
/// plain NATS subscriber on the same subject sees.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Two peers exchange messages in an encrypted room; a plain NATS subscriber sees only ciphertext.")

    @Option(name: .long, help: "The first peer's identity (a member; it creates the room).") var alice: String
    @Option(name: .long, help: "The second peer's identity.") var bob: String
    @Option(name: .long, help: "A data-plane seed.") var server = "nats://127.0.0.1:4222"
    @Option(name: .long, help: "A control-plane seed.") var node = "http://127.0.0.1:4280"
    @Option(name: .long, help: "CA certificate for TLS.") var ca: String?

    func run() async throws {
        func connect(_ path: String, _ name: String) async throws -> (UnibusClient, Identity) {
            let identity = try loadIdentity(path)
            var configuration = UnibusClient.Configuration(identity: identity, dataPlane: [server], controlPlane: [node], caPath: ca)
            configuration.name = name
            do { return (try await UnibusClient.connect(configuration), identity) } catch { throw CLIError("\(error)") }
        }
        let (alice, aliceIdentity) = try await connect(self.alice, "demo-alice")
        let (bob, bobIdentity) = try await connect(self.bob, "demo-bob")
        let suffix = randomSuffix()
        let room = "demo-\(suffix)", subject = "demo.\(suffix)"
        try await alice.createRoom(id: room, subject: subject)
        try await alice.addMember(bobIdentity.userNKey, to: room)
        let aliceMessages = try await alice.join(room), bobMessages = try await bob.join(room)
        print("room \(room) on subject \(subject): encrypted (Megolm), members alice \(aliceIdentity.userNKey.prefix(12))…, bob \(bobIdentity.userNKey.prefix(12))…")

        // A stock NATS subscription on the room's subject (Bob's credentials, no keys used).
        let tap = try NATSConnection(options: .init(seeds: [try Endpoint(parsing: server)], identity: bobIdentity, caPath: ca))
        try await tap.connect()
        let wire = try tap.subscribe(subject)
        try await tap.flush()

        let lines = [("alice", "hello bob, this room is end-to-end encrypted"), ("bob", "hi alice, I read you"), ("alice", "the node only relays ciphertext")]
        var bobIterator = bobMessages.makeAsyncIterator(), aliceIterator = aliceMessages.makeAsyncIterator()
        var wireIterator = wire.makeAsyncIterator()
        for (who, text) in lines {
            let (sender, receiver) = who == "alice" ? (alice, "bob") : (bob, "alice")
            try await sender.publish(Array(text.utf8), to: room, contentType: "text/plain")
            print("\(who) sends:      \(text)")
            // Each peer sees every message (its own too); show the other side's copy.
            var got: OpenedFrame?
            for _ in 0..<2 {
                let aliceCopy = await aliceIterator.next(), bobCopy = await bobIterator.next()
                got = receiver == "bob" ? bobCopy : aliceCopy
                if got.map({ String(decoding: $0.body, as: UTF8.self) }) == text { break }
            }
            guard let got else { throw CLIError("\(receiver) received nothing") }
            print("\(receiver) receives:  \(String(decoding: got.body, as: UTF8.self))  (from \(who), \(got.protection.rawValue), verified)")
            if let raw = await wireIterator.next() {
                let hex = Hex.encode(Array(raw.payload.prefix(40)))
                print("plain NATS sees: \(raw.payload.count) bytes \(hex)…  (contains the text: \(Data(raw.payload).range(of: Data(text.utf8)) != nil ? "YES" : "no"))")
            }
        }
        _ = try? await alice.archiveRoom(room)
        await tap.close()
        await alice.close()
        await bob.close()
    }
}
