import Foundation
import Testing
@testable import UnibusCrypto

/// Megolm against vodozemac and libolm (python-olm), both directions.
@Suite("Megolm interop with vodozemac and libolm")
struct MegolmInteropTests {
    static let libraries = ["vodozemac", "olm"]

    private func results(_ reply: [String: Any]) throws -> [[String: Any]] {
        try #require(reply["results"] as? [[String: Any]], "peer reply: \(reply)")
    }

    @Test(arguments: libraries)
    func unibusEncryptsTheyDecrypt(library: String) throws {
        let outbound = MegolmOutboundSession()
        let sessionKey = outbound.sessionKey.base64
        let plaintexts = ["", "hello", "héllo wörld ✓", String(repeating: "z", count: 1024), String(repeating: "p", count: 15), String(repeating: "q", count: 16)]
        let messages = try plaintexts.map { try outbound.encrypt(Array($0.utf8)).base64 }
        let order = [3, 0, 5, 1, 4, 2, 0]
        let reply = try Peer.python(["op": "decrypt", "lib": library, "session_key": sessionKey,
                                     "messages": order.map { messages[$0] }])
        #expect(reply["session_id"] as? String == outbound.sessionID)
        // zip stops at the shorter side: a short reply must fail, not pass unchecked.
        let decrypted = try results(reply)
        try #require(decrypted.count == order.count, "\(decrypted)")
        for (result, index) in zip(decrypted, order) {
            #expect(result["index"] as? Int == index, "\(result)")
            #expect(result["plaintext"] as? String == base64(Array(plaintexts[index].utf8)))
        }
    }

    @Test(arguments: [("vodozemac", 100_001), ("olm", 1_001)])
    func theyEncryptUnibusDecryptsOutOfOrderAndFarAhead(library: String, count: Int) throws {
        let keep = [0, 1, 2, 255, 256, 257, 1000, count - 1]
        let reply = try Peer.python(["op": "encrypt", "lib": library, "count": count, "keep": keep])
        let key = try MegolmSessionKey(base64: try #require(reply["session_key"] as? String))
        var inbound = MegolmInboundSession(sessionKey: key)
        let messages = try #require(reply["messages"] as? [[String: Any]])
        // keep has a duplicate for olm (count - 1 == 1000): one message per distinct index, in order.
        #expect(messages.compactMap { $0["index"] as? Int } == Set(keep).sorted(), "\(messages.count) messages")
        for entry in messages.reversed() + messages.shuffled() {
            let decrypted = try inbound.decrypt(try MegolmMessage(base64: try #require(entry["message"] as? String)))
            #expect(Int(decrypted.index) == entry["index"] as? Int)
            #expect(base64(decrypted.plaintext) == entry["plaintext"] as? String)
        }
    }

    /// Messages at 100,000 and around 2^24 (where R(0) turns over), encrypted
    /// by Unibus, decrypted by each library from a key shared at index 0.
    @Test(arguments: libraries)
    func farAheadIndicesAcrossThe2To24Boundary(library: String) throws {
        let seed = Ed25519KeyPair().seed
        let start = MegolmRatchet()
        let state0 = try #require(MegolmOutboundSessionState(ratchet: Array(start.bytes), index: 0, signingSeed: seed))
        let key = MegolmOutboundSession(state: state0).sessionKey
        let targets: [UInt32] = [100_000, (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 24) + 256]
        var messages: [String] = []
        for target in targets {
            var ratchet = start
            ratchet.advance(to: target)
            let state = try #require(MegolmOutboundSessionState(ratchet: Array(ratchet.bytes), index: target, signingSeed: seed))
            messages.append(try MegolmOutboundSession(state: state).encrypt(Array("at \(target)".utf8)).base64)
        }
        let reply = try Peer.python(["op": "decrypt", "lib": library, "session_key": key.base64,
                                     "messages": messages.reversed() + messages])
        let expected = targets.reversed() + targets
        let decrypted = try results(reply)
        try #require(decrypted.count == expected.count, "\(decrypted)")
        for (result, target) in zip(decrypted, expected) {
            #expect(result["index"] as? Int == Int(target), "\(result)")
            #expect(result["plaintext"] as? String == base64(Array("at \(target)".utf8)))
        }
    }

    /// Their export at an index past 2^24 is byte-identical to ours.
    @Test(arguments: libraries)
    func exportsAcrossThe2To24BoundaryAreIdentical(library: String) throws {
        let index = (1 << 24) + 3
        let reply = try Peer.python(["op": "encrypt", "lib": library, "count": 1, "export_at": index])
        let key = try MegolmSessionKey(base64: try #require(reply["session_key"] as? String))
        let theirs = try MegolmExportedSessionKey(base64: try #require(reply["export"] as? String))
        var inbound = MegolmInboundSession(sessionKey: key)
        let exported = inbound.export(at: UInt32(index))
        let ours = try #require(exported)
        #expect(theirs.index == UInt32(index))
        #expect(theirs.bytes == ours.bytes)
    }

    @Test(arguments: libraries)
    func exportsImportBothWays(library: String) throws {
        // Ours to theirs: export at 2, they decrypt 2...4 and refuse 1.
        let outbound = MegolmOutboundSession()
        var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
        let messages = try (0..<5).map { try outbound.encrypt(Array("m\($0)".utf8)).base64 }
        let exported = inbound.export(at: 2)
        let export = try #require(exported)
        let reply = try Peer.python(["op": "decrypt", "lib": library, "exported": export.base64,
                                     "messages": Array(messages[1...])])
        let verdicts = try results(reply)
        try #require(verdicts.count == 4, "one verdict per message: \(verdicts)")
        #expect(verdicts[0]["error"] as? String == "unknown-index", "\(verdicts[0])")
        for (offset, result) in verdicts.dropFirst().enumerated() {
            #expect(result["index"] as? Int == offset + 2)
        }
        // Theirs to ours: their export at 3 decrypts their messages 3 and 4, not 2.
        let theirs = try Peer.python(["op": "encrypt", "lib": library, "count": 5, "export_at": 3])
        var imported = MegolmInboundSession(exportedSessionKey: try MegolmExportedSessionKey(base64: try #require(theirs["export"] as? String)))
        let entries = try #require(theirs["messages"] as? [[String: Any]])
        #expect(entries.compactMap { $0["index"] as? Int } == Array(0..<5), "\(entries)")
        for entry in entries {
            let message = try MegolmMessage(base64: try #require(entry["message"] as? String))
            let index = try #require(entry["index"] as? Int)
            if index < 3 {
                #expect(throws: MegolmError.unknownIndex(firstKnown: 3, got: UInt32(index))) { try imported.decrypt(message) }
            } else {
                #expect(base64(try imported.decrypt(message).plaintext) == entry["plaintext"] as? String)
            }
        }
    }

    /// The same damage gets the same verdict from Unibus and from each library.
    @Test(arguments: libraries)
    func tamperedMessagesGetTheSameVerdict(library: String) throws {
        let outbound = MegolmOutboundSession()
        let key = outbound.sessionKey
        let bytes = try outbound.encrypt(Array("attack at dawn".utf8)).bytes
        let damage: [(String, (inout [UInt8]) -> Void)] = [
            ("ciphertext bit", { $0[8] ^= 0x01 }),
            ("MAC bit", { $0[$0.count - 72] ^= 0x80 }),
            ("signature bit", { $0[$0.count - 3] ^= 0x10 }),
            ("index changed", { $0[2] = 0x05 }),
            ("version byte", { $0[0] = 0x02 }),
        ]
        var tampered: [String] = []
        var ours: [String] = []
        for (_, mutate) in damage {
            var copy = bytes
            mutate(&copy)
            tampered.append(Base64.encode(copy))
            var inbound = MegolmInboundSession(sessionKey: key)
            do {
                _ = try inbound.decrypt(try MegolmMessage(bytes: copy))
                ours.append("accepted")
            } catch {
                ours.append(error.reason)
            }
        }
        let reply = try Peer.python(["op": "decrypt", "lib": library, "session_key": key.base64, "messages": tampered])
        let theirs = try results(reply)
        try #require(theirs.count == damage.count, "one verdict per tampered message: \(theirs)")
        for ((name, _), (result, verdict)) in zip(damage, zip(theirs, ours)) {
            #expect(result["error"] as? String == verdict, "\(name): \(library) said \(result), Unibus said \(verdict)")
        }
    }

    @Test(arguments: libraries)
    func tamperedSessionKeysAreRefusedByBoth(library: String) throws {
        var bytes = MegolmOutboundSession().sessionKey.bytes
        bytes[40] ^= 0x01
        #expect(throws: MegolmError.badSignature) { try MegolmSessionKey(bytes: bytes) }
        let reply = try Peer.python(["op": "decrypt", "lib": library, "session_key": Base64.encode(bytes), "messages": [String]()])
        #expect(reply["key_error"] as? String == "bad-signature", "\(reply)")
    }
}

/// `unibus debug megolm` against vodozemac, through the real executable.
@Suite("unibus debug megolm against vodozemac")
struct MegolmCLIInteropTests {
    @Test func cliEncryptsVodozemacDecrypts() throws {
        let (status, output) = try Peer.unibus(["debug", "megolm", "encrypt"], stdin: "first\nsecond line\n\nlast\n")
        #expect(status == 0)
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.count == 5)
        let reply = try Peer.python(["op": "decrypt", "lib": "vodozemac", "session_key": lines[0], "messages": Array(lines[1...])])
        let results = try #require(reply["results"] as? [[String: Any]])
        #expect(results.map { $0["plaintext"] as? String } == ["first", "second line", "", "last"].map { base64(Array($0.utf8)) })
        #expect(results.map { $0["index"] as? Int } == [0, 1, 2, 3])
    }

    @Test func cliDecryptsVodozemacAndReportsFailuresPerLine() throws {
        let reply = try Peer.python(["op": "encrypt", "lib": "vodozemac", "count": 3, "export_at": 1])
        let key = try #require(reply["session_key"] as? String)
        let messages = try #require(reply["messages"] as? [[String: Any]]).compactMap { $0["message"] as? String }
        try #require(messages.count == 3, "\(reply)")
        var tampered = Array(messages[1].utf8)
        tampered[20] = tampered[20] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let input = [messages[2], messages[0], String(decoding: tampered, as: UTF8.self), "%%%"].joined(separator: "\n") + "\n"
        let (status, output) = try Peer.unibus(["debug", "megolm", "decrypt", "--session-key", key], stdin: input)
        #expect(status == 1)
        #expect(output.split(separator: "\n").map(String.init) == [
            "2\t" + base64(Array("vodozemac message 2".utf8)),
            "0\t" + base64(Array("vodozemac message 0".utf8)),
            "error\tbad-signature",
            "error\tbad-base64",
        ])
        let export = try #require(reply["export"] as? String)
        let (exportStatus, exportOutput) = try Peer.unibus(["debug", "megolm", "decrypt", "--exported", export], stdin: messages.joined(separator: "\n"))
        #expect(exportStatus == 1)
        #expect(exportOutput.split(separator: "\n").map(String.init) == [
            "error\tunknown-index",
            "1\t" + base64(Array("vodozemac message 1".utf8)),
            "2\t" + base64(Array("vodozemac message 2".utf8)),
        ])
    }

    @Test func cliInspectsTheirKeysAndMessages() throws {
        let reply = try Peer.python(["op": "encrypt", "lib": "vodozemac", "count": 1, "export_at": 0])
        let key = try #require(reply["session_key"] as? String)
        let message = try #require((reply["messages"] as? [[String: Any]])?.first?["message"] as? String)
        let keyInfo = try Peer.unibus(["debug", "megolm", "inspect", key])
        #expect(keyInfo.status == 0)
        #expect(keyInfo.output.contains("type: session_key"))
        #expect(keyInfo.output.contains("signature: valid"))
        let messageInfo = try Peer.unibus(["debug", "megolm", "inspect"], stdin: message + "\n" + (reply["export"] as? String ?? "") + "\n")
        #expect(messageInfo.status == 0)
        #expect(messageInfo.output.contains("type: message\nversion: 3\nindex: 0\nciphertext_length: 32"))
        #expect(messageInfo.output.contains("type: exported_session_key"))
        let bad = try Peer.unibus(["debug", "megolm", "inspect", "BAAA"])
        #expect(bad.status == 1)
        #expect(bad.output.contains("error: bad-version"))
    }

    @Test func cliSessionFileContinuesWhereItStopped() throws {
        let path = NSTemporaryDirectory() + "unibus-session-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try Peer.unibus(["debug", "megolm", "encrypt", "--session-file", path], stdin: "a\nb\n")
        let second = try Peer.unibus(["debug", "megolm", "encrypt", "--session-file", path], stdin: "c\n")
        #expect(first.status == 0 && second.status == 0)
        let firstLines = first.output.split(separator: "\n").map(String.init)
        let secondLines = second.output.split(separator: "\n").map(String.init)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect(attributes[.posixPermissions] as? Int == 0o600)
        let reply = try Peer.python(["op": "decrypt", "lib": "vodozemac", "session_key": firstLines[0],
                                     "messages": Array(firstLines[1...]) + [secondLines[1]]])
        let results = try #require(reply["results"] as? [[String: Any]])
        #expect(results.map { $0["index"] as? Int } == [0, 1, 2])
    }
}
