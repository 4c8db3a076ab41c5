import ArgumentParser
import Foundation
import UnibusClient
import UnibusControlClient
import UnibusCrypto
import UnibusMembership
import UnibusWire

/// Options of the commands that act as a peer on the bus.
struct PeerOptions: ParsableArguments {
    @Option(name: .long, help: "Your identity file (loaded, never created). Default: the context's.")
    var identity: String = CLIContext.current?.identity ?? ""

    @Option(name: .long, help: "A data-plane seed, nats://HOST:PORT or tls://HOST:PORT (repeat for a seed list). Default: the context's.")
    var server: [String] = CLIContext.current.flatMap { $0.servers.isEmpty ? nil : $0.servers } ?? ["nats://127.0.0.1:4222"]

    @Option(name: .long, help: "A control-plane seed, https://HOST:PORT or http://127.0.0.1:PORT (repeat for a seed list). Default: the context's.")
    var node: [String] = CLIContext.current.flatMap { $0.nodes.isEmpty ? nil : $0.nodes } ?? ["http://127.0.0.1:4280"]

    @Option(name: .long, help: "The CA certificate both planes' certificates must chain to (required for TLS). Default: the context's.")
    var ca: String? = CLIContext.current?.ca

    @Option(name: .long, help: "A client certificate (PEM) for nodes run with --tls-client-ca, from `deploy/make-certs.sh OUT user:NAME`.")
    var cert: String?

    @Option(name: .long, help: "The private key of --cert.")
    var key: String?

    @Option(name: .long, help: "The cluster's root admin (U… nkey, from whoever ran `unibusd init`). Required (here or in the context): membership is verified from it, never taken from a node.")
    var root: String = CLIContext.current?.root ?? ""

    @Option(name: .long, help: "Keep state between runs in this directory (default: memory only): the verified membership log, and, sealed at rest, the room keys this identity holds and the resume cursors of persisted rooms.")
    var stateDir: String?

    @Option(name: .long, help: "Seal --state-dir with the passphrase in this file (mode 0600) instead of a key derived from the identity, for a state directory kept apart from the identity file.")
    var statePassphraseFile: String?

    func validate() throws {
        try CLIContext.check()
        guard !identity.isEmpty else { throw ValidationError("give --identity FILE, or add a context with one (`unibus context add NAME --identity FILE --use`)") }
        guard !root.isEmpty else { throw ValidationError("give --root NKEY (the cluster's root admin), or add a context with one (`unibus context add NAME --root NKEY --use`)") }
    }

    /// --cert and --key together, or neither.
    func clientCertificate() throws -> ClientCertificate? {
        switch (cert, key) {
        case let (cert?, key?): return ClientCertificate(certificatePath: cert, keyPath: key)
        case (nil, nil): return nil
        default: throw ValidationError("--cert and --key go together")
        }
    }

    func connect(name: String) async throws -> UnibusClient {
        try await connect(identity: try loadIdentity(identity), dataPlane: server, name: name)
    }

    /// A client for `identity` with these options (the pinned root, CA,
    /// certificate and state directory).
    func connect(identity: Identity, dataPlane: [String], name: String) async throws -> UnibusClient {
        var configuration = UnibusClient.Configuration(identity: identity, dataPlane: dataPlane, controlPlane: node,
                                                       root: try canonicalUserKey(root, option: "--root"), caPath: ca)
        configuration.clientCertificate = try clientCertificate()
        configuration.stateDirectory = stateDir
        if let statePassphraseFile {
            guard stateDir != nil else { throw ValidationError("--state-passphrase-file seals --state-dir: give both") }
            configuration.statePassphrase = try readPassphrase(statePassphraseFile)
        }
        configuration.warn = { printWarning($0) }
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

/// The probe room `check` and `demo` use: one per identity and purpose,
/// created on first use and reused by every later run, so a periodic health
/// probe adds nothing to the membership log after its first run (each run
/// used to create and archive a room: two operations, forever).
///
/// The id is predictable, so a room is reused only if it is this identity's
/// own (owner, subject) and open; anything else (someone else's room under
/// that id, a conflict) falls back to a fresh, ephemeral room that is
/// archived afterwards. Members other than the ones this run needs are
/// removed, so no stale member keeps receiving session keys.
struct ProbeRoom {
    let id: String
    let subject: String
    /// Whether this run made a throwaway room (archived at the end).
    let ephemeral: Bool

    /// `kind` is one letter (g: check golden, l: check loop, d: demo).
    static func prepare(kind: Character, owner: UnibusClient, policy: RoomPolicy) async throws -> ProbeRoom {
        // "probe-K-" + a 56-character nkey = 64, the longest room id.
        let reusable = ProbeRoom(id: "probe-\(kind)-\(owner.userNKey)", subject: "probe.\(kind).\(owner.userNKey)", ephemeral: false)
        let mine = try await owner.myRooms()
        if let existing = mine.first(where: { $0.id == reusable.id }) {
            if existing.owner == owner.userNKey && existing.subject == reusable.subject { return reusable }
        } else {
            do {
                try await owner.createRoom(id: reusable.id, subject: reusable.subject, policy: policy)
                return reusable
            } catch {
                // Taken (by someone else, or a subject in the way): use a throwaway room.
            }
        }
        let suffix = randomSuffix()
        let ephemeral = ProbeRoom(id: "probe-\(kind)-\(suffix)", subject: "probe-\(kind).\(suffix)", ephemeral: true)
        try await owner.createRoom(id: ephemeral.id, subject: ephemeral.subject, policy: policy)
        return ephemeral
    }

    /// Makes `wanted` (besides the owner) exactly the room's members.
    func settle(owner: UnibusClient, members wanted: [UnibusClient]) async throws {
        let current = try await owner.members(of: id)
        let keep = Set([owner.userNKey] + wanted.map(\.userNKey))
        for stale in current.subtracting(keep).sorted() { try await owner.removeMember(stale, from: id) }
        for member in wanted where !current.contains(member.userNKey) { try await owner.addMember(member.userNKey, to: id) }
    }
}

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
    @Option(name: .long, help: "Messages per second (loop; overrides --interval).") var rate: Double?
    @Option(name: .long, help: "Seconds to run (loop).") var duration: Double = 10
    @Option(name: .long, help: "A second identity that only subscribes (loop): the room's reader, on its own connection.")
    var subscriberIdentity: String?
    @Option(name: .long, help: "Data-plane seeds for the subscriber (repeat; default: --server).") var subscriberServer: [String] = []
    @Option(name: .long, help: "Seconds into the loop at which the subscriber's client is closed and started again (with --subscriber-identity; give --state-dir so it resumes from its stored cursor and keys).")
    var restartSubscriberAt: Double?
    @Flag(name: .long, help: "Use a persisted room (loop): publishes are acknowledged once stored and resent after failovers, and the subscriber resumes from the store after reconnects; the summary counts what was lost anyway.")
    var persist = false

    func run() async throws {
        let client = try await peer.connect(name: "unibus-check")
        // This run's messages carry its own token: a reused room may see another run's.
        let run = randomSuffix()
        var reader = client
        let messages: RoomMessages
        let probe: ProbeRoom
        do {
            // A loop at a high rate would rotate every 1,000 messages by default;
            // the probe room rotates every 100,000 so the loop measures the bus.
            let policy = mode == .loop
                ? RoomPolicy(persist: persist, rotateAfterMessages: 100_000, retainAgeSeconds: 3600, retainMessages: 1_000_000)
                : RoomPolicy()
            probe = try await ProbeRoom.prepare(kind: mode == .loop ? (persist ? "p" : "l") : "g", owner: client, policy: policy)
            if let subscriberIdentity {
                let identity = try loadIdentity(subscriberIdentity)
                reader = try await peer.connect(identity: identity, dataPlane: subscriberServer.isEmpty ? peer.server : subscriberServer,
                                                name: "unibus-check-subscriber")
                try await probe.settle(owner: client, members: [reader])
                messages = try await reader.join(probe.id)
                try await client.openForSending(probe.id)
            } else {
                try await probe.settle(owner: client, members: [])
                messages = try await client.join(probe.id)
            }
        } catch {
            await client.close()
            if reader !== client { await reader.close() }
            throw CLIError("cannot set up the check room: \(error)")
        }
        let tally = Tally()
        let receive = { (messages: RoomMessages) -> Task<Void, Never> in
            Task {
                for await frame in messages {
                    let words = String(decoding: frame.body, as: UTF8.self).split(separator: " ")
                    guard frame.protection == .encrypted, words.count == 4, words[2] == run, let number = Int(words[3]) else { continue }
                    await tally.received(number)
                }
            }
        }
        var receiver = receive(messages)
        let outcome: Result<Void, CLIError>
        switch mode {
        case .golden: outcome = await golden(client, reader: reader, room: probe.id, token: run, tally: tally)
        case .loop:
            outcome = await loop(client, reader: &reader, receiver: &receiver, room: probe.id, token: run, tally: tally) { room in
                // The subscriber's client stops and starts again, as a restarted process would.
                guard let subscriberIdentity = self.subscriberIdentity else { throw CLIError("--restart-subscriber-at needs --subscriber-identity") }
                let fresh = try await self.peer.connect(identity: try loadIdentity(subscriberIdentity),
                                                        dataPlane: self.subscriberServer.isEmpty ? self.peer.server : self.subscriberServer,
                                                        name: "unibus-check-subscriber")
                return (fresh, receive(try await fresh.join(room)))
            }
        }
        if probe.ephemeral { _ = try? await client.archiveRoom(probe.id) }
        // Everything ends before the command returns: exit runs global
        // destructors, and a thread still working then can crash the process.
        await client.close()
        if reader !== client { await reader.close() }
        receiver.cancel()
        await receiver.value
        try outcome.get()
    }

    private func golden(_ client: UnibusClient, reader: UnibusClient, room: String, token: String, tally: Tally) async -> Result<Void, CLIError> {
        let started = Date()
        for number in 1...max(1, count) {
            do {
                try await client.publish(Array("unibus check \(token) \(number)".utf8), to: room, contentType: "text/plain")
            } catch {
                return .failure(CLIError("publish #\(number) failed: \(error)"))
            }
        }
        let deadline = started.addingTimeInterval(timeout)
        while await tally.distinct < count && Date() < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        let received = await tally.seen
        let missing = (1...max(1, count)).filter { !received.contains($0) }
        let rejections = await reader.rejections
        let elapsed = Date().timeIntervalSince(started)
        print("check golden: room \(room) via \(client.connection.currentEndpoint?.description ?? "?")"
              + (reader !== client ? " to \(reader.connection.currentEndpoint?.description ?? "?")" : "")
              + ": sent \(count), received \(count - missing.count) decrypted in \(String(format: "%.3f", elapsed)) s; rejected: \(format(rejections))")
        guard missing.isEmpty else {
            let shown = missing.prefix(20).map(String.init).joined(separator: ", ")
            return .failure(CLIError("missing \(missing.count) of \(count) messages after \(timeout) s: #\(shown)\(missing.count > 20 ? ", …" : "")"))
        }
        guard rejections.isEmpty else { return .failure(CLIError("frames were rejected: \(format(rejections))")) }
        print("check golden: OK")
        return .success(())
    }

    private func loop(_ client: UnibusClient, reader: inout UnibusClient, receiver: inout Task<Void, Never>, room: String, token: String,
                      tally: Tally, restartReader: (String) async throws -> (UnibusClient, Task<Void, Never>)) async -> Result<Void, CLIError> {
        let perSecond = rate ?? 1000 / max(0.001, interval)
        let watcher = FailoverWatcher(tally: tally)
        let publisherEvents = client.connection.events(), readerEvents = reader.connection.events()
        var watchers = [Task { for await event in publisherEvents { await watcher.saw(event, publisher: true) } },
                        Task { for await event in readerEvents { await watcher.saw(event, publisher: false) } }]
        var restartDue = restartSubscriberAt
        var restarts = 0
        let started = Date()
        var sent = 0, failedPublishes = 0, lastStatus = "ok"
        var firstFailure: String?
        var publisherNodes: [String] = [], readerNodes: [String] = []
        var nextLine = started.addingTimeInterval(1)
        while true {
            let elapsed = Date().timeIntervalSince(started)
            if elapsed >= duration { break }
            let attached = client.connection.currentEndpoint?.description
            if let attached, publisherNodes.last != attached { publisherNodes.append(attached) }
            if let readerAt = reader.connection.currentEndpoint?.description, readerNodes.last != readerAt { readerNodes.append(readerAt) }
            // Publish what is due by now, so high rates survive a coarse sleep.
            let due = min(Int(elapsed * perSecond) + 1, Int(duration * perSecond))
            while sent < due {
                sent += 1
                do {
                    // Persisted: sent and kept until stored (acknowledgements are awaited at the end).
                    try await client.send(Array("unibus check \(token) \(sent)".utf8), to: room, contentType: "text/plain")
                    lastStatus = client.connection.isConnected ? "ok" : "buffered"
                } catch {
                    failedPublishes += 1
                    lastStatus = "failed: \(error)"
                    if firstFailure == nil { firstFailure = "\(error)" }
                }
            }
            await tally.setPublished(sent)
            if let due = restartDue, elapsed >= due, reader !== client {
                restartDue = nil
                receiver.cancel()
                await receiver.value
                await reader.close()
                do {
                    (reader, receiver) = try await restartReader(room)
                    restarts += 1
                    let events = reader.connection.events()
                    watchers.append(Task { for await event in events { await watcher.saw(event, publisher: false) } })
                    print(String(format: "t=%5.1fs subscriber restarted", Date().timeIntervalSince(started)))
                } catch {
                    return .failure(CLIError("the subscriber could not start again: \(error)"))
                }
            }
            if Date() >= nextLine {
                let received = await tally.distinct
                let readerAt = reader.connection.currentEndpoint?.description ?? "(reconnecting)"
                print(String(format: "t=%5.1fs sent=%d received=%d node=%@%@ publish=%@", Date().timeIntervalSince(started), sent, received,
                             attached ?? "(reconnecting)", reader !== client ? " subscriber=\(readerAt)" : "", lastStatus))
                nextLine = nextLine.addingTimeInterval(1)
            }
            try? await Task.sleep(for: .milliseconds(perSecond >= 1000 ? 1 : 5))
        }
        var unacknowledged = 0
        if persist {
            // Every frame is kept until a node stored it, across failovers.
            do { try await client.waitForAllStored(timeout: .seconds(30)) } catch {
                unacknowledged = await client.unacknowledgedCount
                if firstFailure == nil { firstFailure = "\(error)" }
            }
            failedPublishes += await client.refusedFrameCount
        }
        // Let the last messages arrive.
        let settle = Date().addingTimeInterval(persist ? 10 : 2)
        while await tally.distinct < sent - failedPublishes && Date() < settle { try? await Task.sleep(for: .milliseconds(10)) }
        let received = await tally.distinct, duplicates = await tally.duplicates
        let lost = sent - failedPublishes - received
        let reconnects = client.connection.reconnectCount + (reader !== client ? reader.connection.reconnectCount : 0)
        var summary = "check loop: sent=\(sent) received=\(received) lost=\(lost) duplicates=\(duplicates) failed-publishes=\(failedPublishes) "
            + (persist ? "persisted=yes unacknowledged=\(unacknowledged) duplicates-dropped=\(await reader.duplicatesDroppedCount) " : "")
            + (restarts > 0 ? "subscriber-restarts=\(restarts) " : "")
            + "reconnects=\(reconnects) nodes=\(publisherNodes.joined(separator: ","))"
        if reader !== client { summary += " subscriber-nodes=\(readerNodes.joined(separator: ","))" }
        let failovers = await watcher.failovers
        if reconnects > 0 {
            summary += " failover observed"
            for (index, failover) in failovers.enumerated() {
                summary += " [\(failover.publisher ? "publisher" : "subscriber") lost \(failover.lost)"
                if let first = failover.firstMessageAfter { summary += String(format: ": first-message-after-disconnect=%.1fms", first * 1000) }
                if !failover.publisher, index == failovers.count - 1, let wire = reader.connection.firstMessageOnCurrentAttachment, wire > failover.at {
                    // The same moment on the wire, before the frame waited behind earlier ones to be decrypted.
                    summary += String(format: " first-frame-on-the-wire=%.1fms", wire.timeIntervalSince(failover.at) * 1000)
                }
                if let back = failover.reattachedAfter { summary += String(format: " reattached-after=%.1fms", back * 1000) }
                summary += "]"
            }
        }
        summary += " rejected: \(format(await reader.rejections))"
        for task in watchers {
            task.cancel()
            await task.value
        }
        print(summary)
        if let firstFailure { print("check loop: first failed publish: \(firstFailure)") }
        if persist && (lost != 0 || duplicates != 0 || unacknowledged != 0) {
            return .failure(CLIError("a persisted room lost \(lost) and duplicated \(duplicates) messages (\(unacknowledged) unacknowledged)"))
        }
        guard received > 0 else {
            let refused = reader.connection.refusedSubscriptions
            return .failure(CLIError(refused > 0
                ? "nothing was received: the subscriber's node refused its subscription \(refused) time(s) (Permissions Violation); "
                    + "that node has not learned the subscriber's room membership (check its routes and `unibus room members`)"
                : "nothing was received (no subscription was refused; check that the publisher's and subscriber's nodes are linked)"))
        }
        for failover in failovers where failover.firstMessageAfter == nil {
            return .failure(CLIError("nothing was received after the \(failover.publisher ? "publisher" : "subscriber") lost \(failover.lost)"))
        }
        if reconnects == 0, failovers.contains(where: { _ in true }) {
            return .failure(CLIError("the connection was lost and never came back"))
        }
        return .success(())
    }
}

/// Disconnections seen during a loop, and how long until messages flowed again.
actor FailoverWatcher {
    struct Failover {
        let publisher: Bool
        let lost: String
        let at: Date
        var reattachedAfter: Double?
        var firstMessageAfter: Double?
    }

    private let tally: Tally
    private var recorded: [Failover] = []

    init(tally: Tally) {
        self.tally = tally
    }

    /// The failovers, with the first arrival after each.
    var failovers: [Failover] {
        get async {
            var result = recorded
            for index in result.indices {
                if let first = await tally.firstArrival(after: index) { result[index].firstMessageAfter = first.timeIntervalSince(result[index].at) }
            }
            return result
        }
    }

    func saw(_ event: ConnectionEvent, publisher: Bool) async {
        switch event {
        case .disconnected(let endpoint, _):
            let at = Date()
            recorded.append(Failover(publisher: publisher, lost: endpoint.description, at: at))
            await tally.mark(recorded.count - 1, at: at)
        case .connected:
            if let index = recorded.lastIndex(where: { $0.publisher == publisher && $0.reattachedAfter == nil }) {
                recorded[index].reattachedAfter = Date().timeIntervalSince(recorded[index].at)
            }
        }
    }
}

/// Counts what the check received.
actor Tally {
    private(set) var seen: Set<Int> = []
    private(set) var duplicates = 0
    private(set) var total = 0
    private(set) var lastArrival: Date?
    /// Messages published so far (updated by the loop every tick).
    private var published = 0
    /// Marks (disconnections) still waiting for their first arrival: the
    /// first message published after the mark that arrives. Frames already in
    /// flight on the lost connection do not count.
    private var waiting: [(mark: Int, after: Int)] = []
    private var firstArrivals: [Int: Date] = [:]

    func received(_ number: Int) {
        total += 1
        let now = Date()
        lastArrival = now
        if !seen.insert(number).inserted { duplicates += 1 }
        if !waiting.isEmpty {
            for entry in waiting where number > entry.after { firstArrivals[entry.mark] = now }
            waiting.removeAll { number > $0.after }
        }
    }

    func setPublished(_ count: Int) { published = count }

    /// Records, under `mark`, the first arrival of a message published from now on.
    func mark(_ mark: Int, at: Date) {
        waiting.append((mark, published))
    }

    func firstArrival(after mark: Int) -> Date? { firstArrivals[mark] }

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
    @Option(name: .long, help: "A client certificate (PEM) for nodes run with --tls-client-ca, with --key.") var cert: String?
    @Option(name: .long, help: "The private key of --cert.") var key: String?
    @Option(name: .long, help: "The cluster's root admin (U… nkey). Required: membership is verified from it, never taken from a node.")
    var root: String

    private func clientCertificate() throws -> ClientCertificate? {
        switch (cert, key) {
        case let (cert?, key?): return ClientCertificate(certificatePath: cert, keyPath: key)
        case (nil, nil): return nil
        default: throw ValidationError("--cert and --key go together")
        }
    }

    func run() async throws {
        func connect(_ path: String, _ name: String) async throws -> (UnibusClient, Identity) {
            let identity = try loadIdentity(path)
            var configuration = UnibusClient.Configuration(identity: identity, dataPlane: [server], controlPlane: [node],
                                                           root: try canonicalUserKey(root, option: "--root"), caPath: ca)
            configuration.clientCertificate = try clientCertificate()
            configuration.warn = { printWarning($0) }
            configuration.name = name
            do { return (try await UnibusClient.connect(configuration), identity) } catch { throw CLIError("\(error)") }
        }
        let (alice, aliceIdentity) = try await connect(self.alice, "demo-alice")
        let bob: UnibusClient, bobIdentity: Identity
        do { (bob, bobIdentity) = try await connect(self.bob, "demo-bob") } catch {
            await alice.close()
            throw error
        }
        var tap: NATSConnection?
        do {
            try await converse(alice: alice, aliceIdentity: aliceIdentity, bob: bob, bobIdentity: bobIdentity, tap: &tap)
        } catch {
            // Close everything on the error path too, before the process exits.
            await tap?.close()
            await alice.close()
            await bob.close()
            throw error
        }
    }

    private func converse(alice: UnibusClient, aliceIdentity: Identity, bob: UnibusClient, bobIdentity: Identity,
                          tap tapSlot: inout NATSConnection?) async throws {
        let probe = try await ProbeRoom.prepare(kind: "d", owner: alice, policy: RoomPolicy())
        let room = probe.id, subject = probe.subject
        try await probe.settle(owner: alice, members: [bob])
        let aliceMessages = try await alice.join(room), bobMessages = try await bob.join(room)
        print("room \(room) on subject \(subject): encrypted (Megolm), members alice \(aliceIdentity.userNKey.prefix(12))…, bob \(bobIdentity.userNKey.prefix(12))…")

        // A stock NATS subscription on the room's subject (Bob's credentials, no keys used).
        var tapOptions = NATSConnection.Options(seeds: [try Endpoint(parsing: server)], identity: bobIdentity, caPath: ca)
        tapOptions.clientCertificate = try clientCertificate()
        let tap = try NATSConnection(options: tapOptions)
        tapSlot = tap
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
        if probe.ephemeral { _ = try? await alice.archiveRoom(room) }
        await tap.close()
        await alice.close()
        await bob.close()
    }
}

/// A warning from the client library, on standard error.
func printWarning(_ message: String) {
    FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
}

/// A passphrase from a file only its owner can read (one line; the newline is not part of it).
func readPassphrase(_ path: String) throws -> [UInt8] {
    var info = stat()
    guard stat(path, &info) == 0 else { throw CLIError("cannot read \(path): \(String(cString: strerror(errno)))") }
    guard info.st_mode & 0o077 == 0 else { throw CLIError("\(path) can be read by others: run `chmod 600 \(path)`") }
    guard let data = FileManager.default.contents(atPath: path), data.count <= 4096 else { throw CLIError("cannot read \(path) (or it is over 4 KiB)") }
    var bytes = [UInt8](data)
    while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
    guard !bytes.isEmpty else { throw CLIError("\(path) is empty") }
    return bytes
}
