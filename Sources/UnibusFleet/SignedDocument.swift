import Foundation
import UnibusCrypto

/// A JSON document signed by the key it names, readable by any JSON
/// reader (a stock NATS client sees plain fields and a `signature`):
///
///     {"node":"N…",…,"signature":"<unpadded base64 of 64 bytes>"}
///
/// The signature covers `context` + "\n" + the document as it was before the
/// signature was appended (the same bytes up to the last field, then `}`),
/// so a verifier needs no canonical re-encoding: it cuts the fixed-length
/// suffix off. `context` separates kinds (a beat can never pass as a command
/// or a route proof, even under the same key).
public enum SignedDocument {
    /// `,"signature":"` + 86 unpadded base64 characters + `"}`.
    static let suffixPrefix = Array(#","signature":""#.utf8)
    static let signatureCharacters = 86
    static let suffixLength = suffixPrefix.count + signatureCharacters + 2
    /// Signed documents are small; anything larger is refused unread.
    public static let maximumBytes = 64 * 1024

    /// Appends the signature of `key` over `body` (a JSON object, at least one field).
    public static func seal(_ body: [UInt8], context: String, key: Ed25519KeyPair) -> [UInt8] {
        // Every document here is an object with fields; anything else is
        // left unsigned, so it fails to open with a clear error (never a trap).
        guard body.count >= 3, body.first == UInt8(ascii: "{"), body.last == UInt8(ascii: "}") else { return body }
        let signature = key.sign(Array((context + "\n").utf8) + body)
        return Array(body.dropLast()) + suffixPrefix + Array(Base64.encode(signature).utf8) + Array(#""}"#.utf8)
    }

    /// Encodes `value` (sorted keys) and seals it.
    public static func seal<T: Encodable>(_ value: T, context: String, key: Ed25519KeyPair) -> [UInt8] {
        seal(encode(value), context: context, key: key)
    }

    /// The body and signature of `payload`, or why it is not a signed document.
    public static func split(_ payload: some Collection<UInt8>) throws(FleetMessageError) -> (body: [UInt8], signature: [UInt8]) {
        let bytes = Array(payload)
        guard bytes.count <= maximumBytes else { throw .malformed("over \(maximumBytes) bytes") }
        guard bytes.count >= suffixLength + 2, bytes.first == UInt8(ascii: "{") else {
            throw .malformed("not a signed JSON document")
        }
        let cut = bytes.count - suffixLength
        guard Array(bytes[cut..<(cut + suffixPrefix.count)]) == suffixPrefix,
              bytes[bytes.count - 2] == UInt8(ascii: "\""), bytes[bytes.count - 1] == UInt8(ascii: "}") else {
            throw .malformed("the document must end with its \"signature\" field")
        }
        let text = bytes[(cut + suffixPrefix.count)..<(bytes.count - 2)]
        guard let signature = try? Base64.decode(String(decoding: text, as: UTF8.self)), signature.count == 64 else {
            throw .malformed("the signature must be 64 bytes of base64")
        }
        return (Array(bytes[..<cut]) + [UInt8(ascii: "}")], signature)
    }

    /// Decodes and verifies a document signed by the key it names in
    /// `signer` (an nkey of `type`).
    public static func open<T: Decodable>(_ payload: some Collection<UInt8>, as type: T.Type, context: String, signerType: NKeyType,
                                          signer: (T) -> String) throws(FleetMessageError) -> T {
        let (body, signature) = try split(payload)
        let value: T
        do { value = try JSONDecoder().decode(T.self, from: Data(body)) } catch {
            throw .malformed("the document does not match its schema: \(FleetMessageError.describe(error))")
        }
        let name = signer(value)
        guard name.utf8.count <= 64, let (_, key) = try? NKey.decodePublicKey(name, expecting: signerType) else {
            throw .malformed("the signer \(name.prefix(64)) is not a \(signerType == .server ? "node" : "user") nkey")
        }
        guard key.verify(signature: signature, message: Array((context + "\n").utf8) + body) else {
            throw .badSignature(name)
        }
        return value
    }

    /// Sorted-key JSON, slashes unescaped (what every document here is).
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? [UInt8](encoder.encode(value))) ?? Array("{}".utf8)
    }
}

/// Why a beat, command, result or agent heartbeat was refused. The text
/// names the field or check.
public enum FleetMessageError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case badSignature(String)
    case invalid(String)

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed: \(why)"
        case .badSignature(let signer): return "the signature does not verify under \(signer)"
        case .invalid(let why): return why
        }
    }

    /// A decoding error in words naming the field (no type dumps).
    public static func describe(_ error: Error) -> String {
        guard let error = error as? DecodingError else { return "not JSON" }
        func path(_ keys: [CodingKey]) -> String { keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let context): return "\(path(context.codingPath + [key])) is missing"
        case .typeMismatch(_, let context): return "\(path(context.codingPath)) has the wrong type"
        case .valueNotFound(_, let context): return "\(path(context.codingPath)) is null"
        case .dataCorrupted(let context): return context.codingPath.isEmpty ? "not JSON" : "\(path(context.codingPath)) is invalid"
        @unknown default: return "not JSON"
        }
    }
}
