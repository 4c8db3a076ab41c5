import CSodiumBench
import BenchSupport
import Foundation
import UnibusCrypto

/// Measures Unibus's Megolm encrypt/decrypt and libsodium's raw Ed25519
/// sign/verify, single-threaded, and prints one JSON object per case:
/// {"case": "...", "size": N, "ops_per_sec": X}.
/// Usage: unibus-crypto-bench [SECONDS_PER_CASE]
/// The cases run back to back in a fixed order so that a driver that calls
/// this repeatedly gets measurements close together in time.
@main
struct CryptoBench {
    static func now() -> Double { monotonicSeconds() }


    static func report(_ name: String, size: Int, _ value: Double) {
        print("{\"case\": \"\(name)\", \"size\": \(size), \"ops_per_sec\": \(Int(value))}")
        fflush(nil)
    }

    static func main() throws {
        precondition(sodium_init() >= 0)
        if CommandLine.arguments.count > 2, CommandLine.arguments[1] == "--profile" {
            // A fixed amount of work for perf/callgrind: N encryptions and N decryptions of SIZE (128) bytes.
            let count = Int(CommandLine.arguments[2]) ?? 1000
            let outbound = MegolmOutboundSession()
            var inbound = MegolmInboundSession(sessionKey: outbound.sessionKey)
            let size = CommandLine.arguments.count > 3 ? Int(CommandLine.arguments[3]) ?? 128 : 128
            let plaintext = [UInt8](repeating: 0x61, count: size)
            for _ in 0..<count {
                let message = try outbound.encrypt(plaintext)
                _ = try inbound.decrypt(try MegolmMessage(bytes: message.bytes))
            }
            return
        }
        let seconds = CommandLine.arguments.count > 1 ? Double(CommandLine.arguments[1]) ?? 2 : 2
        for size in [128, 1024] {
            let plaintext = [UInt8](repeating: 0x61, count: size)

            // Raw libsodium over a message of the size Megolm signs for this plaintext.
            let signedLength = size + 16 + 8 + 8
            let message = [UInt8](repeating: 0x62, count: signedLength)
            var publicKey = [UInt8](repeating: 0, count: 32)
            var secretKey = [UInt8](repeating: 0, count: 64)
            crypto_sign_ed25519_keypair(&publicKey, &secretKey)
            var signature = [UInt8](repeating: 0, count: 64)
            crypto_sign_ed25519_detached(&signature, nil, message, UInt64(message.count), secretKey)
            let outbound = MegolmOutboundSession()
            let sender = MegolmOutboundSession()
            let key = sender.sessionKey
            let batch = try (0..<2000).map { _ in try sender.encrypt(plaintext).bytes }

            var bench = Interleaved()
            bench.add("sodium-ed25519-sign") {
                var scratch = [UInt8](repeating: 0, count: 64)
                for _ in 0..<50 {
                    crypto_sign_ed25519_detached(&scratch, nil, message, UInt64(message.count), secretKey)
                }
                return 50
            }
            bench.add("sodium-ed25519-verify") {
                for _ in 0..<50 {
                    guard crypto_sign_ed25519_verify_detached(signature, message, UInt64(message.count), publicKey) == 0 else {
                        fatalError("verify failed")
                    }
                }
                return 50
            }
            // Megolm encrypt: encrypt + MAC + sign + ratchet step.
            bench.add("unibus-megolm-encrypt") {
                for _ in 0..<50 { _ = try outbound.encrypt(plaintext) }
                return 50
            }
            // Megolm decrypt: parse + verify + ratchet step + MAC + decrypt, in index order.
            var inbound = MegolmInboundSession(sessionKey: key)
            var next = 0
            bench.add("unibus-megolm-decrypt") {
                for _ in 0..<50 {
                    if next == batch.count {
                        inbound = MegolmInboundSession(sessionKey: key)
                        next = 0
                    }
                    let decrypted = try inbound.decrypt(try MegolmMessage(bytes: batch[next]))
                    precondition(decrypted.plaintext.count == size)
                    next += 1
                }
                return 50
            }
            try bench.run(seconds: seconds)
            for (index, entry) in bench.cases.enumerated() {
                report(entry.name, size: size, bench.rate(index))
            }
        }
    }
}
