import ArgumentParser
import Foundation
import UnibusCrypto

struct DebugCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "debug",
        abstract: "Tools for checking keys and messages against other implementations.",
        subcommands: [MegolmCommand.self, JWTVerifyCommand.self]
    )
}

/// `unibus debug megolm …`: the same base64 formats as vodozemac and libolm,
/// so an operator can move keys and messages between them in a shell.
struct MegolmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "megolm",
        abstract: "Inspect, encrypt and decrypt Megolm (m.megolm.v1.aes-sha2) data.",
        subcommands: [Inspect.self, Encrypt.self, Decrypt.self]
    )

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Decode a session key, exported session or message and print its fields.",
            discussion: "Reads the base64 value from the argument, or one value per line from standard input. Exit status 1 if any value is invalid.")

        @Argument(help: "A base64 session key (version 2), export (version 1) or message (version 3).")
        var value: String?

        func run() throws {
            let inputs = value.map { [$0] } ?? standardInputLines().map { String(decoding: $0, as: UTF8.self) }
            var failed = false
            for (number, input) in inputs.enumerated() {
                if number > 0 { print("") }
                do {
                    for (name, field) in try describe(input.trimmingCharacters(in: .whitespaces)) {
                        print("\(name): \(field)")
                    }
                } catch {
                    print("error: \(error.reason): \(error)")
                    failed = true
                }
            }
            if failed { throw ExitCode(1) }
        }

        private func describe(_ text: String) throws(MegolmError) -> [(String, String)] {
            let bytes: [UInt8]
            do { bytes = try Base64.decode(text) } catch { throw .badBase64 }
            switch bytes.first {
            case MegolmMessage.version:
                let message = try MegolmMessage(bytes: bytes)
                return [("type", "message"), ("version", "3"), ("index", "\(message.index)"),
                        ("ciphertext_length", "\(message.ciphertext.count)"),
                        ("mac", Hex.encode(message.mac)), ("signature", Base64.encode(message.signature))]
            case MegolmSessionKey.version:
                let key = try MegolmSessionKey(bytes: bytes)
                return [("type", "session_key"), ("version", "2"), ("index", "\(key.index)"),
                        ("session_id", key.sessionID), ("signing_key", Base64.encode(key.signingKey.bytes)),
                        ("signature", "valid")]
            case MegolmExportedSessionKey.version:
                let key = try MegolmExportedSessionKey(bytes: bytes)
                return [("type", "exported_session_key"), ("version", "1"), ("index", "\(key.index)"),
                        ("session_id", Base64.encode(key.signingKey.bytes)),
                        ("signing_key", Base64.encode(key.signingKey.bytes))]
            case let other:
                throw .badVersion(expected: MegolmMessage.version, got: other)
            }
        }
    }

    struct Encrypt: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Encrypt each line of standard input as one message.",
            discussion: """
            Prints the session key (base64, at the index of the first message) on the first line, \
            then one base64 message per input line. Without --session-file a new session is made \
            and forgotten. With --session-file the session is loaded (or created) there and the \
            advanced ratchet is saved back (mode 0600), so no index is ever used twice.
            """)

        @Option(name: .long, help: "A file holding the outbound session; created if missing.")
        var sessionFile: String?

        func run() throws {
            let session = try loadSession()
            print(session.sessionKey.base64)
            var failure: MegolmError?
            for line in standardInputLines() {
                do {
                    print(try session.encrypt(line).base64)
                } catch {
                    failure = error
                    break
                }
            }
            if let sessionFile {
                do {
                    try SecretFile.write(session.state.encodedFile(), to: sessionFile, overwrite: true)
                } catch {
                    throw CLIError("the session could not be saved; its indices may be reused if you load the old file again: \(error)")
                }
            }
            if let failure { throw CLIError("\(failure)") }
        }

        private func loadSession() throws -> MegolmOutboundSession {
            guard let sessionFile else { return MegolmOutboundSession() }
            do {
                let bytes = try SecretFile.read(sessionFile, maximumSize: 64 * 1024, missingHint: "")
                do {
                    return MegolmOutboundSession(state: try MegolmOutboundSessionState(file: bytes))
                } catch {
                    throw CLIError("\(SecretFileError.corrupt(path: sessionFile, reason: error.reason))")
                }
            } catch let error as SecretFileError {
                guard case .missing = error else { throw CLIError("\(error)") }
                let session = MegolmOutboundSession()
                do {
                    try SecretFile.write(session.state.encodedFile(), to: sessionFile, overwrite: false)
                } catch {
                    throw CLIError("\(error)")
                }
                return session
            }
        }
    }

    struct Decrypt: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Decrypt base64 messages, one per line of standard input.",
            discussion: "Prints `INDEX<TAB>PLAINTEXT-BASE64` or `error<TAB>REASON` per line; exit status 1 if any failed.")

        @Option(name: .long, help: "A signed session key (version 2, base64).")
        var sessionKey: String?

        @Option(name: .long, help: "An exported session (version 1, base64).")
        var exported: String?

        func validate() throws {
            guard (sessionKey == nil) != (exported == nil) else {
                throw ValidationError("give exactly one of --session-key and --exported")
            }
        }

        func run() throws {
            var session: MegolmInboundSession
            do {
                if let sessionKey {
                    session = MegolmInboundSession(sessionKey: try MegolmSessionKey(base64: sessionKey))
                } else {
                    session = MegolmInboundSession(exportedSessionKey: try MegolmExportedSessionKey(base64: exported ?? ""))
                }
            } catch {
                throw CLIError("the session key is invalid: \(error.reason): \(error)")
            }
            var failed = false
            for line in standardInputLines() {
                let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                do {
                    let decrypted = try session.decrypt(try MegolmMessage(base64: text))
                    print("\(decrypted.index)\t\(Base64.encode(decrypted.plaintext))")
                } catch {
                    print("error\t\(error.reason)")
                    failed = true
                }
            }
            if failed { throw ExitCode(1) }
        }
    }
}
