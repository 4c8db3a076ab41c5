import Foundation
import NIOConcurrencyHelpers
import UnibusCrypto

/// An `Authorizer` read from a JSON file, for running the broker before the
/// membership service exists (and for tests):
///
/// ```json
/// {"users": [{"nkey": "U…",
///             "permissions": {"publish": {"allow": ["orders.>"], "deny": []},
///                             "subscribe": {"allow": ["_INBOX.>"]}}}]}
/// ```
/// A user without `permissions` may use every subject. `reload()` re-reads
/// the file; follow it with `Broker.reauthorize()` to apply the change to
/// open connections.
public final class StaticAllowlist: Authorizer, @unchecked Sendable {
    // @unchecked: `users` is guarded by `lock`.
    private struct File: Decodable {
        struct User: Decodable {
            var nkey: String
            var permissions: Permissions?
        }
        var users: [User]
    }

    public struct LoadError: Error, CustomStringConvertible {
        public let description: String
    }

    public let path: String?
    private let lock = NIOLock()
    private var users: [String: Permissions]

    /// Loads the file at `path`; a missing, unreadable or invalid file is an error.
    public init(path: String) throws {
        self.path = path
        self.users = try Self.read(path)
    }

    /// An in-memory allowlist (tests, embedding).
    public init(users: [String: Permissions]) {
        self.path = nil
        self.users = users
    }

    public func permissions(forUser userNKey: String) -> Permissions? {
        lock.withLock { users[userNKey] }
    }

    /// Replaces the whole table.
    public func update(_ users: [String: Permissions]) {
        lock.withLock { self.users = users }
    }

    /// Re-reads the file. On error the previous table stays in force.
    public func reload() throws {
        guard let path else { return }
        let fresh = try Self.read(path)
        lock.withLock { users = fresh }
    }

    private static func read(_ path: String) throws -> [String: Permissions] {
        let data: Data
        do {
            data = Data(try RegularFile.read(path, maximumSize: 16 << 20))
        } catch {
            throw LoadError(description: "cannot read allowlist file: \(error)")
        }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            throw LoadError(description: "allowlist file \(path) is not valid JSON of the form {\"users\": [{\"nkey\": \"U…\"}]}: \(error)")
        }
        var users: [String: Permissions] = [:]
        for user in file.users {
            do {
                _ = try NKey.decodePublicKey(user.nkey, expecting: .user)
            } catch {
                throw LoadError(description: "allowlist file \(path): \(user.nkey.prefix(60)) is not a user nkey (\(error))")
            }
            users[user.nkey] = user.permissions ?? .everything
        }
        return users
    }
}
