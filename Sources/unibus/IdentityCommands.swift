import ArgumentParser
import Foundation
import UnibusCrypto

struct IdentityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity",
        abstract: "Create and show identities (Ed25519 signing + X25519 key-exchange keys).",
        subcommands: [New.self, Show.self, NKeyCommand.self]
    )

    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a new identity file (mode 0600); never overwrites one.")

        @Option(name: .long, help: "Where to write the identity file.")
        var out: String

        @Flag(name: .long, help: "Print the public keys as JSON.")
        var json = false

        func run() throws {
            let identity = Identity()
            do {
                try IdentityFile.write(identity, to: out)
            } catch {
                throw CLIError("\(error)")
            }
            try printIdentity(identity, path: out, json: json)
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an identity's public keys.")

        @Option(name: .long, help: "The identity file.")
        var identity: String

        @Flag(name: .long, help: "Print as JSON.")
        var json = false

        func run() throws {
            try printIdentity(try loadIdentity(identity), path: identity, json: json)
        }
    }

    struct NKeyCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "nkey",
            abstract: "Print the identity as a NATS nkey (the public user key, or with --seed the secret seed).")

        @Option(name: .long, help: "The identity file.")
        var identity: String

        @Flag(name: .long, help: "Print the secret seed (\"SU…\") instead of the public key. Handle with care.")
        var seed = false

        func run() throws {
            let loaded = try loadIdentity(identity)
            print(seed ? loaded.userSeedNKey : loaded.userNKey)
        }
    }
}

func loadIdentity(_ path: String) throws -> Identity {
    do {
        return try IdentityFile.load(from: path)
    } catch {
        throw CLIError("\(error)")
    }
}

func printIdentity(_ identity: Identity, path: String, json: Bool) throws {
    let fields: [(String, String)] = [
        ("file", path),
        ("nkey", identity.userNKey),
        ("ed25519_public", Base64.encode(identity.signing.publicKey.bytes)),
        ("ed25519_public_hex", Hex.encode(identity.signing.publicKey.bytes)),
        // The X25519 key has one name wherever users see it: the exchange key
        // (`--exchange-key`, `exchange_key` in the control plane).
        ("exchange_key", Base64.encode(identity.keyExchange.publicKey.bytes)),
        // What a login role with key binding expects in the token's cnf.jkt.
        ("jkt", JWK.thumbprint(ed25519: identity.signing.publicKey.bytes)),
    ]
    if json {
        let object = Dictionary(uniqueKeysWithValues: fields)
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    } else {
        for (name, value) in fields { print("\(name): \(value)") }
    }
}
