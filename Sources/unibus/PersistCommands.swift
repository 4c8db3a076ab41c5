import ArgumentParser
import Foundation
import UnibusClient
import UnibusControlClient
import UnibusCrypto
import UnibusMembership

/// `unibus send`: one message per line of standard input.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send one message per line of standard input to a room; exit 0 only when every one was acknowledged.",
        discussion: """
        In a persisted room a message is acknowledged once a node stored it (on itself and one peer when a peer is linked); \
        unacknowledged messages are kept and sent again, the same bytes, after a failover. In other rooms a message is \
        acknowledged once the node received it (a PING answered after it).
        """)

    @OptionGroup var peer: PeerOptions
    @Option(name: .long, help: "The room's id.") var id: String
    @Option(name: .long, help: "The content type of each message.") var contentType = "text/plain"
    @Option(name: .long, help: "Seconds to wait for the last acknowledgements after the input ends.") var timeout: Double = 30
    @Flag(name: .long, help: "Print `stored N` as acknowledgements arrive (persisted rooms).") var progress = false

    func run() async throws {
        guard timeout.isFinite, (0.1...86_400).contains(timeout) else { throw CLIError("--timeout must be 0.1 to 86400 seconds") }
        let client = try await peer.connect(name: "unibus-send")
        let outcome: Result<String, CLIError>
        do {
            outcome = .success(try await send(client))
        } catch let error as CLIError {
            outcome = .failure(error)
        } catch {
            outcome = .failure(CLIError("\(error)"))
        }
        await client.close()
        print(try outcome.get())
    }

    private func send(_ client: UnibusClient) async throws -> String {
        let rooms = try await client.myRooms()
        guard let room = rooms.first(where: { $0.id == id }) else { throw CLIError("you are not a member of room \(id) (or it does not exist)") }
        try await client.openForSending(id)
        // Frames an earlier run left in the spool go first and are counted with this run's.
        let spooled = await client.unacknowledgedCount, refusedBefore = await client.refusedFrameCount
        var sent = spooled
        var reported = 0
        var lastReport = Date()
        for await line in standardInputStream() {
            do {
                try await client.send(line, to: id, contentType: contentType)
            } catch ClientError.tooManyUnacknowledged {
                // Wait for the backlog, then send this line (nothing is skipped).
                try await client.waitForAllStored(timeout: .seconds(timeout))
                try await client.send(line, to: id, contentType: contentType)
            }
            sent += 1
            if progress, Date().timeIntervalSince(lastReport) > 0.1 {
                let stored = sent - (await client.unacknowledgedCount) - (await client.refusedFrameCount - refusedBefore)
                if stored != reported { say("stored \(stored)"); reported = stored }
                lastReport = Date()
            }
        }
        guard room.policy.persist else {
            try await client.connection.flush(timeout: .milliseconds(Int64(timeout * 1000)))
            return "sent \(sent) message(s) to \(id); the node received them (the room is not persisted: nothing is stored)"
        }
        let deadline = Date().addingTimeInterval(timeout)
        while await client.unacknowledgedCount > 0 && Date() < deadline {
            if progress {
                let stored = sent - (await client.unacknowledgedCount) - (await client.refusedFrameCount - refusedBefore)
                if stored != reported { say("stored \(stored)"); reported = stored }
            }
            do { try await client.waitForAllStored(timeout: .milliseconds(100)) } catch {}
        }
        let unacknowledged = await client.unacknowledgedCount, refused = await client.refusedFrameCount - refusedBefore
        let stored = sent - unacknowledged - refused
        if progress { say("stored \(stored)") }
        let fromSpool = spooled > 0 ? " (\(spooled) from an earlier run's spool)" : ""
        guard unacknowledged == 0, refused == 0 else {
            throw CLIError("sent \(sent)\(fromSpool), stored \(stored), refused \(refused), unacknowledged \(unacknowledged) after \(timeout) s "
                           + "(refusals name their reason in the node's receipt: quota, membership, signature, or a frame that waited past "
                           + "its room's window; with --state-dir the unacknowledged ones wait in the spool for the next run: do not send them again)")
        }
        return "sent \(sent) message(s) to \(id)\(fromSpool); all stored"
    }
}

/// `unibus history`: a persisted room's retained messages.
struct HistoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "Read a persisted room's retained history, decrypted and verified.",
        discussion: "Messages whose key this member never received (sent before it joined a `joined`-history room, "
            + "or whose sender has not shared it yet) are counted as unreadable.")

    @OptionGroup var peer: PeerOptions
    @Option(name: .long, help: "The room's id.") var id: String
    @Option(name: .long, help: "The newest N messages (default 20).") var last: Int?
    @Option(name: .long, help: "Everything from TIME on: RFC 3339 (2026-12-01T10:00:00Z) or an age (90s, 15m, 2h, 7d).") var since: String?
    @Flag(name: .long, help: "One JSON document.") var json = false

    struct Entry: Encodable {
        var sender: String
        var handle: String?
        var timestamp: String
        var firstStored: String
        var contentType: String
        var text: String?
        var base64: String?

        enum CodingKeys: String, CodingKey {
            case sender, handle, timestamp, text, base64
            case firstStored = "first_stored"
            case contentType = "content_type"
        }
    }

    struct Output: Encodable {
        var room: String
        var messages: [Entry]
        var unreadable: [String: Int]
    }

    func run() async throws {
        guard last == nil || since == nil else { throw CLIError("give --last or --since, not both") }
        if let last, !(1...100_000).contains(last) { throw CLIError("--last must be 1 to 100000") }
        var from: Date?
        if let since {
            if let date = ISO8601DateFormatter().date(from: since) { from = date } else {
                from = Date(timeIntervalSinceNow: -Double(try parseDuration(since, option: "--since")))
            }
        }
        let client = try await peer.connect(name: "unibus-history")
        let result: Result<History, Error>
        do { result = .success(try await client.history(room: id, last: from == nil ? (last ?? 20) : nil, since: from, limit: 100_000)) } catch {
            result = .failure(error)
        }
        let handles = await client.membership.users.mapValues(\.handle)
        await client.close()
        let history: History
        do { history = try result.get() } catch { throw CLIError("\(error)") }
        let time = ISO8601DateFormatter()
        time.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let entries = history.messages.map { message -> Entry in
            let frame = message.frame
            let text = String(validating: frame.body, as: UTF8.self)
            return Entry(sender: frame.sender, handle: handles[frame.sender],
                         timestamp: time.string(from: Date(timeIntervalSince1970: Double(frame.timestamp) / 1000)),
                         firstStored: time.string(from: Date(timeIntervalSince1970: Double(message.firstStored) / 1000)),
                         contentType: frame.contentType, text: text, base64: text == nil ? Base64.encode(frame.body) : nil)
        }
        let unreadable = Dictionary(uniqueKeysWithValues: history.unreadable.map { ($0.key.rawValue, $0.value) })
        if json {
            try printJSON(Output(room: id, messages: entries, unreadable: unreadable))
            return
        }
        for entry in entries {
            print("\(entry.timestamp) \(entry.handle ?? String(entry.sender.prefix(12))): \(entry.text ?? "(\(entry.contentType), base64) \(entry.base64 ?? "")")")
        }
        if !unreadable.isEmpty {
            FileHandle.standardError.write(Data("unreadable: \(unreadable.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))\n".utf8))
        }
    }
}

/// Standard input line by line, read on its own thread (never on the
/// concurrency pool), at most 1,000 lines ahead of the consumer.
func standardInputStream() -> AsyncStream<[UInt8]> {
    let (stream, continuation) = AsyncStream<[UInt8]>.makeStream()
    let room = DispatchSemaphore(value: 1000)
    let taken = AsyncStream<[UInt8]> { output in
        let relay = Task {
            for await line in stream {
                output.yield(line)
                room.signal()
            }
            output.finish()
        }
        output.onTermination = { _ in relay.cancel() }
    }
    let reader = Thread {
        while let line = readLine(strippingNewline: true) {
            room.wait()
            continuation.yield(Array(line.utf8))
        }
        continuation.finish()
    }
    reader.start()
    return taken
}

/// One line on standard output, written at once (progress lines are read by scripts while the command runs).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
