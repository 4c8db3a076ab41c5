import CSodiumBench
import BenchSupport
import Foundation
import UnibusClient
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore
import UnibusWire

/// Benchmarks of the client library's frame path, driven by `client.py`.
///
///     unibus-client-bench frames [SECONDS]
///         RoomKeyring.seal / RoomKeyring.open of Megolm frames at 128 B and
///         1 KiB, single-threaded, interleaved with libsodium's raw Ed25519
///         sign / verify over as many bytes as the frame's Megolm signature
///         covers. One JSON object per case.
///     unibus-client-bench e2e --alice FILE --bob FILE --server URL --node URL [--count N] [--rate R] [--seconds S]
///         Two UnibusClients through a running node: encrypted 128 B
///         messages per second (alice → bob), then one-way latency at a paced
///         rate, and the same two measurements with plain NATS publishes of
///         the same size over the same client connections' library
///         (NATSConnection), the reference that shows what the frame
///         cryptography costs end to end.
@main
struct ClientBench {
    static func now() -> Double { monotonicSeconds() }

    static func nanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func wallMillis() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

    static func emit(_ object: [String: Any]) {
        if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
            print(String(decoding: data, as: UTF8.self))
            fflush(nil)
        }
    }

    static func main() async throws {
        precondition(sodium_init() >= 0)
        let arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "frames":
            try frames(seconds: arguments.count > 1 ? Double(arguments[1]) ?? 2 : 2)
        case "e2e":
            try await endToEnd(Array(arguments.dropFirst()))
        case "workloads":
            try WorkloadBench.run(hours: arguments.count > 1 ? Double(arguments[1]) ?? 1 : 1)
        case "profile-seal":
            // A fixed amount of sealing for perf/callgrind: COUNT frames of SIZE bytes.
            try profileSeal(count: arguments.count > 1 ? Int(arguments[1]) ?? 1000 : 1000,
                            size: arguments.count > 2 ? Int(arguments[2]) ?? 1024 : 1024)
        default:
            FileHandle.standardError.write(Data("usage: unibus-client-bench frames [SECONDS] | e2e --alice F --bob F --root NKEY --server URL --node URL | workloads [HOURS]\n".utf8))
            exit(2)
        }
    }

    // MARK: frames per second


    struct BenchError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func frames(seconds: Double) throws {
        let alice = Identity(), bob = Identity()
        // Steady state: no rotation inside the measurement, a window wide
        // enough for frames sealed at the start of the run.
        let policy = RoomPolicy(rotateAfterMessages: 1 << 40, frameWindowSeconds: 3600)
        let room = RoomInfo(id: "bench", subject: "bench.frames", owner: alice.userNKey, policy: policy)
        let members: Set<String> = [alice.userNKey, bob.userNKey]

        for size in [128, 1024] {
            let body = [UInt8](repeating: 0x61, count: size)
            let sender = RoomKeyring(identity: alice)
            sender.setRoom(room, members: members)
            let outbound = sender.rotate(room: room.id, now: wallMillis())
            let share = sender.share(outbound, room: room.id, recipient: bob.userNKey, exchangeKey: bob.keyExchange.publicKey)
            func receiver() throws -> RoomKeyring {
                let keyring = RoomKeyring(identity: bob)
                keyring.setRoom(room, members: members)
                try keyring.acceptShare(room: room.id, sender: alice.userNKey, sessionID: outbound.session.sessionID,
                                        sealed: share.sealed, signature: share.signature,
                                        sessionSignature: sender.ownerSignature(outbound, room: room.id))
                return keyring
            }
            // Frames to open, in index order; a fresh receiver (fresh replay
            // window) each time the batch is used up.
            let batch = try (0..<4000).map { _ in try sender.seal(room: room.id, contentType: "application/octet-stream", body: body, now: wallMillis()) }
            var inbound = try receiver()
            var next = 0

            // The raw reference: Ed25519 over as many bytes as the frame's
            // Megolm signature covers (the Megolm message without its signature).
            guard let envelope = try? FrameEnvelope(decoding: batch[0]), case .megolm(_, let message) = envelope.body else {
                throw BenchError("the sealed frame is not a Megolm frame")
            }
            let signedLength = message.count - 64
            let signed = [UInt8](repeating: 0x62, count: signedLength)
            var publicKey = [UInt8](repeating: 0, count: 32), secretKey = [UInt8](repeating: 0, count: 64)
            crypto_sign_ed25519_keypair(&publicKey, &secretKey)
            var signature = [UInt8](repeating: 0, count: 64)
            crypto_sign_ed25519_detached(&signature, nil, signed, UInt64(signed.count), secretKey)

            var bench = Interleaved()
            bench.add("sodium-ed25519-sign") {
                var scratch = [UInt8](repeating: 0, count: 64)
                for _ in 0..<50 { crypto_sign_ed25519_detached(&scratch, nil, signed, UInt64(signed.count), secretKey) }
                return 50
            }
            bench.add("sodium-ed25519-verify") {
                for _ in 0..<50 {
                    guard crypto_sign_ed25519_verify_detached(signature, signed, UInt64(signed.count), publicKey) == 0 else {
                        throw BenchError("raw verify failed")
                    }
                }
                return 50
            }
            // Megolm alone on an inner frame of the same size: what the frame layer adds.
            let bare = MegolmOutboundSession()
            let innerBytes = InnerFrame(room: room.id, timestamp: wallMillis(), contentType: "application/octet-stream",
                                        compressed: false, body: body).encoded()
            bench.add("megolm-encrypt") {
                for _ in 0..<50 { _ = try bare.encrypt(innerBytes) }
                return 50
            }
            // Send: policy lookup, inner frame, Megolm encrypt (AES, MAC,
            // Ed25519 signature, ratchet step), envelope.
            bench.add("frame-seal") {
                for _ in 0..<50 { _ = try sender.seal(room: room.id, contentType: "application/octet-stream", body: body, now: wallMillis()) }
                return 50
            }
            // Receive: envelope, policy, membership, session lookup, replay
            // check, Megolm verify + MAC + decrypt, inner frame, time window.
            bench.add("frame-open") {
                for _ in 0..<50 {
                    if next == batch.count {
                        inbound = try receiver()
                        next = 0
                    }
                    guard case .success(let opened) = inbound.open(batch[next], room: room.id, now: wallMillis()), opened.body.count == size else {
                        throw BenchError("a frame did not open")
                    }
                    next += 1
                }
                return 50
            }
            try bench.run(seconds: seconds)
            for (index, entry) in bench.cases.enumerated() {
                emit(["case": entry.name, "size": size, "ops_per_sec": Int(bench.rate(index)), "signed_bytes": signedLength,
                      "frame_bytes": batch[0].count])
            }
        }
    }

    static func profileSeal(count: Int, size: Int) throws {
        let alice = Identity()
        let room = RoomInfo(id: "bench", subject: "bench.frames", owner: alice.userNKey,
                            policy: RoomPolicy(rotateAfterMessages: 1 << 40, frameWindowSeconds: 3600))
        let sender = RoomKeyring(identity: alice)
        sender.setRoom(room, members: [alice.userNKey])
        _ = sender.rotate(room: room.id, now: wallMillis())
        let body = [UInt8](repeating: 0x61, count: size)
        for _ in 0..<count { _ = try sender.seal(room: room.id, contentType: "application/octet-stream", body: body, now: wallMillis()) }
    }

    // MARK: end to end through a node

    static func option(_ arguments: [String], _ name: String) -> String? {
        guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
        return arguments[index + 1]
    }

    static func endToEnd(_ arguments: [String]) async throws {
        guard let alicePath = option(arguments, "--alice"), let bobPath = option(arguments, "--bob"),
              let server = option(arguments, "--server"), let node = option(arguments, "--node"), let root = option(arguments, "--root") else {
            throw BenchError("e2e needs --alice, --bob, --root, --server and --node")
        }
        let count = Int(option(arguments, "--count") ?? "") ?? 20_000
        let rate = Double(option(arguments, "--rate") ?? "") ?? 2000
        let seconds = Double(option(arguments, "--seconds") ?? "") ?? 3
        let mode = option(arguments, "--mode") ?? "both"
        let aliceIdentity = try IdentityFile.load(from: alicePath), bobIdentity = try IdentityFile.load(from: bobPath)

        if mode == "both" || mode == "encrypted" {
            var aliceConfiguration = UnibusClient.Configuration(identity: aliceIdentity, dataPlane: [server], controlPlane: [node], root: root)
            aliceConfiguration.maxBufferedMessages = 1_000_000
            let alice = try await UnibusClient.connect(aliceConfiguration)
            let bob = try await UnibusClient.connect(.init(identity: bobIdentity, dataPlane: [server], controlPlane: [node], root: root))
            let suffix = Hex.encode(Sodium.randomNonce(count: 6))
            let room = "bench-\(suffix)"
            // No rotation during the run: the measurement is the steady state.
            try await alice.createRoom(id: room, subject: "bench.\(suffix)", policy: RoomPolicy(rotateAfterMessages: 1 << 40))
            try await alice.addMember(bobIdentity.userNKey, to: room)
            _ = try await alice.join(room)
            let messages = try await bob.join(room)
            let sink = Sink()
            let receiver = Task {
                for await frame in messages {
                    let sent = frame.body.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    await sink.record(sent: sent, at: nanos())
                }
            }
            // One message to establish and share the session before timing.
            try await alice.publish(stamp(size: 128, at: 0), to: room)
            try await sink.wait(for: 1, timeout: 10)
            await sink.reset()

            let throughput = try await measureThroughput(count: count, sink: sink) { body in try await alice.publish(body, to: room) }
            emit(["case": "e2e-encrypted-throughput", "size": 128, "msgs_per_sec": Int(throughput)])
            await sink.reset()
            let latency = try await measureLatency(rate: rate, seconds: seconds, sink: sink) { body in try await alice.publish(body, to: room) }
            emit(["case": "e2e-encrypted-latency", "size": 128, "rate": rate, "p50_us": latency.p50, "p99_us": latency.p99, "count": latency.count])
            let rejections = await bob.rejections
            if !rejections.isEmpty { throw BenchError("bob rejected frames: \(rejections)") }
            receiver.cancel()
            _ = try? await alice.archiveRoom(room)
            await alice.close()
            await bob.close()
        }

        if mode == "both" || mode == "plain" {
            // The reference: the same library's NATS connections, plaintext
            // payloads of the same size, the same node, no frame cryptography.
            var publisherOptions = NATSConnection.Options(seeds: [try Endpoint(parsing: server)], identity: aliceIdentity)
            publisherOptions.maxBufferedMessages = 1_000_000
            let publisher = try NATSConnection(options: publisherOptions)
            let subscriber = try NATSConnection(options: .init(seeds: [try Endpoint(parsing: server)], identity: bobIdentity))
            try await publisher.connect()
            try await subscriber.connect()
            // Both are members of no common room here: use bob's own inbox,
            // which alice may publish to (replies) and bob may subscribe to.
            let subject = "_INBOX.\(bobIdentity.userNKey).bench"
            let stream = try subscriber.subscribe(subject)
            try await subscriber.flush()
            let sink = Sink()
            let receiver = Task {
                for await message in stream {
                    let sent = message.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    await sink.record(sent: sent, at: nanos())
                }
            }
            let throughput = try await measureThroughput(count: count, sink: sink) { body in try publisher.publish(subject, payload: body) }
            emit(["case": "e2e-plain-throughput", "size": 128, "msgs_per_sec": Int(throughput)])
            await sink.reset()
            let latency = try await measureLatency(rate: rate, seconds: seconds, sink: sink) { body in try publisher.publish(subject, payload: body) }
            emit(["case": "e2e-plain-latency", "size": 128, "rate": rate, "p50_us": latency.p50, "p99_us": latency.p99, "count": latency.count])
            receiver.cancel()
            await publisher.close()
            await subscriber.close()
        }
    }

    /// A 128-byte body whose first 8 bytes are the send time (monotonic ns).
    static func stamp(size: Int, at time: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0x61, count: size)
        withUnsafeBytes(of: time) { raw in for index in 0..<8 { body[index] = raw[index] } }
        return body
    }

    /// Publishes `count` messages as fast as the publisher takes them;
    /// throughput is messages received per second, first publish to last arrival.
    static func measureThroughput(count: Int, sink: Sink, publish: ([UInt8]) async throws -> Void) async throws -> Double {
        let start = nanos()
        for _ in 0..<count { try await publish(stamp(size: 128, at: nanos())) }
        try await sink.wait(for: count, timeout: 120)
        let last = await sink.lastArrival
        return Double(count) / (Double(last - start) / 1e9)
    }

    /// Publishes at `rate` per second for `seconds`; one-way latency
    /// percentiles in microseconds (sender and receiver share the clock).
    static func measureLatency(rate: Double, seconds: Double, sink: Sink,
                               publish: ([UInt8]) async throws -> Void) async throws -> (p50: Double, p99: Double, count: Int) {
        let total = Int(rate * seconds)
        let interval = 1e9 / rate
        let start = nanos()
        for index in 0..<total {
            let due = start + UInt64(Double(index) * interval)
            let current = nanos()
            if due > current + 200_000 { try await Task.sleep(nanoseconds: due - current) }
            try await publish(stamp(size: 128, at: nanos()))
        }
        try await sink.wait(for: total, timeout: 60)
        var latencies = await sink.latencies
        latencies.sort()
        func percentile(_ p: Double) -> Double {
            Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]) / 1000
        }
        return ((percentile(0.50) * 10).rounded() / 10, (percentile(0.99) * 10).rounded() / 10, latencies.count)
    }
}

/// What the receiving side saw.
actor Sink {
    private(set) var latencies: [UInt64] = []
    private(set) var lastArrival: UInt64 = 0

    func record(sent: UInt64, at arrival: UInt64) {
        latencies.append(arrival >= sent ? arrival - sent : 0)
        lastArrival = arrival
    }

    func reset() {
        latencies.removeAll(keepingCapacity: true)
        lastArrival = 0
    }

    func wait(for count: Int, timeout: Double) async throws {
        let deadline = ClientBench.now() + timeout
        while latencies.count < count {
            if ClientBench.now() > deadline {
                throw ClientBench.BenchError("received \(latencies.count) of \(count) messages within \(timeout) s")
            }
            try await Task.sleep(nanoseconds: 1_000_000)
        }
    }
}
