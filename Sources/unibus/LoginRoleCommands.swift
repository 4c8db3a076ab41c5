import ArgumentParser
import Foundation
import UnibusCrypto
import UnibusMembership

/// A login role as an admin writes it: like `LoginRole`'s JSON, with each
/// key given as `{"pem": "...", "kid": "..."}`, `{"jwk": {...}}` or
/// `{"spki": "BASE64"}` (converted to the pinned SPKI form).
struct LoginRoleSpec: Decodable {
    struct KeySpec: Decodable {
        var pem: String?
        var jwk: JWK?
        var spki: String?
        var kid: String?
    }

    var name: String
    var issuer: String
    var keys: [KeySpec]
    var algorithms: [JWSAlgorithm]
    var bound_audiences: [String]
    var bound_subject: String?
    var bound_claims: [String: String]?
    var user_claim: String
    var rooms: [String]?
    var ttl: Int64?
    var require_key_binding: Bool?
    var claim_mappings: [String: String]?

    func role() throws -> LoginRole {
        var pinned: [JWSPublicKey] = []
        for (index, key) in keys.enumerated() {
            do {
                if let pem = key.pem {
                    pinned.append(try JWSPublicKey(pem: pem, kid: key.kid))
                } else if let jwk = key.jwk {
                    pinned.append(try JWSPublicKey(jwk: jwk, kid: key.kid))
                } else if let spki = key.spki {
                    pinned.append(try JWSPublicKey(spki: try Base64.decode(spki), kid: key.kid))
                } else {
                    throw CLIError("key \(index + 1): give pem, jwk or spki")
                }
            } catch let error as JWSError {
                throw CLIError("key \(index + 1): \(error)")
            }
        }
        let role = LoginRole(name: name, issuer: issuer, keys: pinned, algorithms: algorithms, boundAudiences: bound_audiences,
                             boundSubject: bound_subject, boundClaims: bound_claims ?? [:], userClaim: user_claim, rooms: rooms ?? [],
                             ttlSeconds: ttl ?? 3600, requireKeyBinding: require_key_binding ?? false, claimMappings: claim_mappings ?? [:])
        do { try role.validate() } catch { throw CLIError("\(error)") }
        return role
    }
}

/// `unibus debug jwt-verify`: the login checks of a role against one JWT,
/// offline, as a node and every client will run them.
struct JWTVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jwt-verify",
        abstract: "Verify a JWT against a login role (JSON) as a node would at login; print the login it grants or the failing check (exit 1)."
    )

    @Option(name: .long, help: "The login role, JSON (keys as pem, jwk or spki).") var role: String
    @Option(name: .long, help: "A file holding the JWT (compact form).") var jwt: String
    @Option(name: .long, help: "Check times as of this Unix time (default: now).") var at: Int64?
    @Option(name: .long, help: "The workload's Ed25519 signing key (U… nkey), for roles that require key binding.") var workloadKey: String?

    func run() throws {
        guard let roleData = FileManager.default.contents(atPath: role), roleData.count <= 1 << 20 else { throw CLIError("cannot read \(role)") }
        let spec: LoginRoleSpec
        do { spec = try JSONDecoder().decode(LoginRoleSpec.self, from: roleData) } catch {
            throw CLIError("\(role) is not a login role: \(String("\(error)".prefix(300)))")
        }
        let loginRole = try spec.role()
        guard let tokenData = FileManager.default.contents(atPath: jwt), tokenData.count <= CompactJWS.maximumLength + 2 else {
            throw CLIError("cannot read \(jwt) (at most \(CompactJWS.maximumLength) bytes)")
        }
        let token = String(decoding: tokenData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        var key: [UInt8]?
        if let workloadKey {
            do { key = try NKey.decodePublicKey(workloadKey, expecting: .user).1.bytes } catch { throw CLIError("--workload-key must be a user nkey (U…)") }
        }
        let now = at ?? Int64(Date().timeIntervalSince1970)
        do {
            let login = try loginRole.verify(token, at: now, workloadKey: key)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(login), as: UTF8.self))
        } catch {
            throw CLIError("refused: \(error)")
        }
    }
}
