import ArgumentParser
import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusMembership

/// `unibus role`: login roles (admins), which turn an identity provider's
/// JWTs into expiring workload identities.
struct RoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "role",
        abstract: "Manage login roles: which JWTs log workloads in, into which rooms, for how long (admins).",
        subcommands: [Add.self, List.self, Revoke.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a login role, or replace the role of that name (which ends the logins made through it).",
            discussion: "The issuer's public keys are pinned in the signed role: PEM files (SPKI or RSA PUBLIC KEY) or JWK JSON "
                + "files. Rotating them is running this again; workloads then log in anew. HS* is never accepted: every node "
                + "and client re-verifies each login, which a shared secret would have to be handed to.")
        @OptionGroup var connection: RoleNodeOptions
        @Option(name: .long, help: "The role's name.") var name: String
        @Option(name: .long, help: "The iss tokens must carry.") var issuer: String
        @Option(name: .long, help: "A file with one of the issuer's public keys (PEM or JWK); repeatable.") var key: [String] = []
        @Option(name: .long, help: "The kid of each --key, in order (give none or one per key).") var kid: [String] = []
        @Option(name: .long, help: "An allowed algorithm: RS256, RS384, RS512, ES256, ES384 or EdDSA; repeatable.") var algorithm: [String] = []
        @Option(name: .long, help: "An accepted aud; repeatable (at least one).") var audience: [String] = []
        @Option(name: .long, help: "The sub tokens must carry.") var subject: String?
        @Option(name: .long, help: "NAME=GLOB: a claim that must match (* and ? wildcards); repeatable.") var claim: [String] = []
        @Option(name: .long, help: "The claim whose string value becomes the workload's handle.") var userClaim: String
        @Option(name: .long, help: "A room the workload joins as a member; repeatable.") var room: [String] = []
        @Option(name: .long, help: "The longest a login lasts, in seconds (60 to 2592000; the token's exp may end it sooner).") var ttl: Int64 = 3600
        @Option(name: .long, help: "CLAIM=KEY: keep a claim as the workload's metadata KEY; repeatable.") var claimMapping: [String] = []
        @Flag(name: .long, help: "Require the token to name the workload's key (cnf.jkt, RFC 7800): a token seen by others is then useless to them.")
        var requireKeyBinding = false

        func run() async throws {
            guard !key.isEmpty else { throw CLIError("give the issuer's public key with --key FILE (PEM or JWK)") }
            guard kid.isEmpty || kid.count == key.count else { throw CLIError("give one --kid per --key, in order, or none") }
            var keys: [JWSPublicKey] = []
            for (index, path) in key.enumerated() {
                guard let data = FileManager.default.contents(atPath: path), data.count <= 64 * 1024 else { throw CLIError("cannot read key file \(path)") }
                let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                let kid = kid.isEmpty ? nil : kid[index]
                do {
                    if text.hasPrefix("{") {
                        guard let jwk = try? JSONDecoder().decode(JWK.self, from: data) else { throw CLIError("\(path) is not a JWK") }
                        keys.append(try JWSPublicKey(jwk: jwk, kid: kid ?? jwk.kid))
                    } else {
                        keys.append(try JWSPublicKey(pem: text, kid: kid))
                    }
                } catch let error as JWSError {
                    throw CLIError("\(path): \(error)")
                }
            }
            var algorithms: [JWSAlgorithm] = []
            for name in algorithm {
                guard let parsed = JWSAlgorithm(rawValue: name) else {
                    throw CLIError("unknown algorithm \(name): use RS256, RS384, RS512, ES256, ES384 or EdDSA (HS* and none are never accepted)")
                }
                algorithms.append(parsed)
            }
            let role = LoginRole(name: name, issuer: issuer, keys: keys, algorithms: algorithms, boundAudiences: audience,
                                 boundSubject: subject, boundClaims: try pairs(claim, option: "--claim"), userClaim: userClaim,
                                 rooms: room, ttlSeconds: ttl, requireKeyBinding: requireKeyBinding,
                                 claimMappings: try pairs(claimMapping, option: "--claim-mapping"))
            do { try role.validate() } catch { throw CLIError("\(error)") }
            if !requireKeyBinding {
                FileHandle.standardError.write(Data(("warning: role \(name) accepts bearer tokens: a token is in the log every member reads, and "
                    + "any node that relays a login sees it; a compromised node can log in with it first, under its own key. Use "
                    + "--require-key-binding where the identity provider can put cnf.jkt in tokens (docs/workload-login.md).\n").utf8))
            }
            let options = connection.nodeOptions
            let result = try await NodeSession.open(options).submit(.setLoginRole(role: role))
            if options.json { try printJSON(result) } else { print("login role \(name) set (operation \(result.id))") }
        }

        private func pairs(_ values: [String], option: String) throws -> [String: String] {
            var result: [String: String] = [:]
            for value in values {
                guard let equals = value.firstIndex(of: "="), equals != value.startIndex else { throw CLIError("\(option) takes NAME=VALUE, not \(value)") }
                let name = String(value[..<equals])
                guard result[name] == nil else { throw CLIError("\(option) names \(name) twice") }
                result[name] = String(value[value.index(after: equals)...])
            }
            return result
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the login roles and their live workload logins.")
        @OptionGroup var options: NodeOptions

        func run() async throws {
            let response = try await NodeSession.open(options).get("/v1/roles", as: ControlAPI.LoginRolesResponse.self)
            if options.json { try printJSON(response); return }
            if response.roles.isEmpty { print("no login roles"); return }
            for role in response.roles {
                let keys = role.keys.map { key -> String in
                    let kind: String
                    switch key.kind {
                    case .rsa(let bits): kind = "RSA-\(bits)"
                    case .ec(let bits): kind = "EC-P\(bits)"
                    case .ed25519: kind = "Ed25519"
                    }
                    return kind + (key.kid.map { "(\($0))" } ?? "")
                }.joined(separator: ",")
                print("\(role.name)  issuer=\(role.issuer)  keys=\(keys)  algorithms=\(role.algorithms.map(\.rawValue).joined(separator: ","))  "
                      + "audiences=\(role.boundAudiences.joined(separator: ","))  rooms=\(role.rooms.joined(separator: ","))  ttl=\(role.ttlSeconds)s  "
                      + "key_binding=\(role.requireKeyBinding)  live=\(response.workloads[role.name] ?? 0)")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a login role: every login made through it ends now, on every node.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The role's name.") var name: String

        func run() async throws {
            let result = try await NodeSession.open(options).submit(.removeLoginRole(name: name))
            if options.json { try printJSON(result) } else { print("login role \(name) removed (operation \(result.id)); its workloads are logged out") }
        }
    }
}

/// `NodeOptions` for `role add`, whose `--key` is the issuer's key (as the
/// issue's CLI names it): the client certificate's key is `--cert-key` here.
struct RoleNodeOptions: ParsableArguments {
    @Option(name: .long, help: "The node's control plane: https://HOST:PORT (or http://127.0.0.1:PORT in dev mode). Default: the context's first node.")
    var node = CLIContext.current?.nodes.first ?? "http://127.0.0.1:4280"
    @Option(name: .long, help: "Your identity file (loaded, never created). Default: the context's.")
    var identity: String = CLIContext.current?.identity ?? ""
    @Option(name: .long, help: "The CA certificate that issued the node's certificate (required for https). Default: the context's.")
    var ca: String? = CLIContext.current?.ca
    @Option(name: .long, help: "A client certificate (PEM) for nodes that require one, with --cert-key.") var cert: String?
    @Option(name: .long, help: "The private key of --cert.") var certKey: String?
    @Flag(name: .long, help: "Print JSON.") var json = false

    func validate() throws {
        try CLIContext.check()
        guard !identity.isEmpty else { throw ValidationError("give --identity FILE, or add a context with one (`unibus context add NAME --identity FILE --use`)") }
    }

    var nodeOptions: NodeOptions {
        var options = NodeOptions()
        options.node = node
        options.identity = identity
        options.ca = ca
        options.cert = cert
        options.key = certKey
        options.json = json
        return options
    }
}

/// `unibus login`: a workload logs itself in with a JWT.
struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Log a workload in with a JWT through a login role; write its identity file only on success.",
        discussion: "A new identity is made here (never sent anywhere: only its public keys are), the node checks the token, "
            + "and the workload signs its own login, which embeds the token so every node and client can verify it. With "
            + "--existing, the identity already in --out logs in: a renewal with a fresh token before the login expires (its "
            + "rooms, and the room keys shared with it, stay), or a key made first so the token could be bound to it (cnf.jkt: "
            + "`unibus identity show --json` prints its thumbprint as jkt).")
    @Option(name: .long, help: "The login role.") var role: String
    @Option(name: .long, help: "A file holding the JWT (compact form).") var jwt: String
    @Option(name: .long, help: "Where to write the new identity (0600; never overwritten).") var out: String
    @Flag(name: .long, help: "Log in as the identity already in --out (a renewal, or a key the token is bound to).") var existing = false
    @Option(name: .long, help: "The node's control plane: https://HOST:PORT (or http://127.0.0.1:PORT in dev mode).")
    var node = CLIContext.current?.nodes.first ?? "http://127.0.0.1:4280"
    @Option(name: .long, help: "The CA certificate that issued the node's certificate (required for https).") var ca: String? = CLIContext.current?.ca
    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() async throws {
        guard let data = FileManager.default.contents(atPath: jwt), data.count <= CompactJWS.maximumLength + 2 else {
            throw CLIError("cannot read the token in \(jwt) (at most \(CompactJWS.maximumLength) bytes)")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let identity: Identity
        if existing {
            identity = try loadIdentity(out)
        } else {
            guard !FileManager.default.fileExists(atPath: out) else {
                throw CLIError("\(out) exists: give a new path, or --existing to log in as that identity")
            }
            identity = Identity()
        }
        // The new key is written (0600) before the login, beside --out, and
        // moved there only once the login is in the log: a failed write
        // never leaves a login whose key is lost, a refusal leaves no file.
        let pending = out + ".pending"
        if !existing {
            do { try IdentityFile.write(identity, to: pending) } catch .alreadyExists {
                throw CLIError("\(pending) exists: an earlier `unibus login` stopped before it finished, and that key may be logged in; "
                               + "look at it (unibus identity show --identity \(pending)), then move or delete it")
            } catch {
                throw CLIError("cannot write the new identity beside \(out): \(error)")
            }
        }
        let accepted: ControlAPI.WorkloadLoginAccepted
        do { accepted = try await ControlSession.loginWorkload(url: node, caPath: ca, role: role, jwt: token, identity: identity) } catch {
            guard !existing else { throw CLIError("login refused: \(error)") }
            // A definite refusal leaves nothing; anything else (a timeout, a
            // reset, a server error) may have come after the login was
            // stored, so the key stays where it is.
            if let failure = error as? ControlClient.Failure, let status = failure.status, [400, 401, 403, 404, 429].contains(status) {
                try? FileManager.default.removeItem(atPath: pending)
                throw CLIError("login refused: \(error)")
            }
            throw CLIError("login failed: \(error); the login may have been stored, so the new identity is kept in \(pending)")
        }
        if !existing {
            // link, not rename: an --out made meanwhile is never replaced.
            guard link(pending, out) == 0 else {
                throw CLIError("logged in, but cannot put the identity at \(out) (\(String(cString: strerror(errno)))): it is in \(pending)")
            }
            unlink(pending)
        }
        if json { try printJSON(accepted); return }
        let expires = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(accepted.expiresAt)))
        print("logged in as \(accepted.handle) (\(accepted.key)) through role \(accepted.role) until \(expires); "
              + "rooms: \(accepted.rooms.isEmpty ? "none" : accepted.rooms.joined(separator: ", ")); identity in \(out)")
    }
}
