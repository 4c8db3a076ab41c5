import CSQLite
import Foundation

/// A SQLite error with the statement or step that failed and SQLite's message.
public struct DatabaseError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// A minimal wrapper over the SQLite C API: one connection, prepared
/// statements with positional binding, and transactions. Not thread-safe;
/// `MembershipStore` serialises access.
public final class SQLiteDatabase {
    private var handle: OpaquePointer?
    public let path: String
    /// Prepared statements by SQL text, reused (reset) by `query`.
    private var statements: [String: OpaquePointer] = [:]

    /// When a commit reaches the disk.
    public enum Synchronous: String, Sendable, CaseIterable {
        /// Every commit is fsynced before it returns: survives kill -9 and power loss.
        case full
        /// Commits are written to the WAL (the OS holds them) and fsynced at
        /// checkpoints: survives kill -9 of the process, not a power loss or
        /// kernel crash (the last commits may be lost then).
        case normal
    }

    /// Opens (creating if needed) the database with WAL and, by default,
    /// full fsync, so a committed transaction survives kill -9 and power loss.
    public init(path: String, synchronous: Synchronous = .full) throws {
        self.path = path
        // Create the file 0600 before SQLite opens it (its -wal and -shm
        // files take the database file's mode): never readable by others,
        // not even between creation and a chmod. Links are not followed.
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw DatabaseError(description: "cannot open database \(path): \(String(cString: strerror(errno)))"
                                + (errno == ELOOP ? " (it is a symbolic link)" : ""))
        }
        var info = stat()
        let statted = fstat(fd, &info) == 0
        close(fd)
        guard statted, info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o077 == 0 else {
            throw DatabaseError(description: "database \(path) is not a regular file only its owner can read; run `chmod 600 \(path)`")
        }
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX
        guard sqlite3_open_v2(path, &db, flags, nil) == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw DatabaseError(description: "cannot open database \(path): \(message)")
        }
        handle = db
        sqlite3_busy_timeout(db, 5000)
        try execute("PRAGMA journal_mode=WAL")
        try execute(synchronous == .full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL")
        try execute("PRAGMA foreign_keys=ON")
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    private var message: String { String(cString: sqlite3_errmsg(handle)) }

    /// Runs SQL that returns no rows we need (may hold several statements).
    public func execute(_ sql: String) throws {
        var error: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(handle, sql, nil, nil, &error) == SQLITE_OK else {
            let text = error.map { String(cString: $0) } ?? message
            sqlite3_free(error)
            throw DatabaseError(description: "\(text) (in: \(sql.prefix(80)))")
        }
    }

    public enum Value: Equatable, Sendable {
        case integer(Int64)
        case text(String)
        case blob([UInt8])
        case null
    }

    /// Runs one statement with positional parameters; returns all rows.
    @discardableResult
    public func query(_ sql: String, _ parameters: [Value] = []) throws -> [[Value]] {
        var statement: OpaquePointer?
        if let cached = statements[sql] {
            statement = cached
        } else {
            guard sqlite3_prepare_v2(handle, sql, -1, &statement, nil) == SQLITE_OK else {
                throw DatabaseError(description: "\(message) (in: \(sql.prefix(80)))")
            }
            if statements.count < 64 { statements[sql] = statement }
        }
        let cached = statements[sql] == statement
        defer {
            if cached {
                sqlite3_reset(statement)
                sqlite3_clear_bindings(statement)
            } else {
                sqlite3_finalize(statement)
            }
        }
        for (offset, parameter) in parameters.enumerated() {
            let index = Int32(offset + 1)
            let status: Int32
            switch parameter {
            case .integer(let value): status = sqlite3_bind_int64(statement, index, value)
            case .text(let value): status = sqlite3_bind_text(statement, index, value, -1, unibus_sqlite_transient())
            case .blob(let value):
                // An empty array may have no base address, which SQLite would bind as NULL.
                status = value.isEmpty ? sqlite3_bind_zeroblob(statement, index, 0)
                    : value.withUnsafeBytes { sqlite3_bind_blob(statement, index, $0.baseAddress, Int32($0.count), unibus_sqlite_transient()) }
            case .null: status = sqlite3_bind_null(statement, index)
            }
            guard status == SQLITE_OK else { throw DatabaseError(description: "\(message) (binding \(index) in: \(sql.prefix(80)))") }
        }
        var rows: [[Value]] = []
        while true {
            let step = sqlite3_step(statement)
            if step == SQLITE_DONE { break }
            guard step == SQLITE_ROW else { throw DatabaseError(description: "\(message) (in: \(sql.prefix(80)))") }
            var row: [Value] = []
            for column in 0..<sqlite3_column_count(statement) {
                switch sqlite3_column_type(statement, column) {
                case SQLITE_INTEGER: row.append(.integer(sqlite3_column_int64(statement, column)))
                case SQLITE_TEXT: row.append(.text(String(cString: sqlite3_column_text(statement, column))))
                case SQLITE_BLOB:
                    let count = Int(sqlite3_column_bytes(statement, column))
                    if let bytes = sqlite3_column_blob(statement, column) {
                        row.append(.blob(Array(UnsafeRawBufferPointer(start: bytes, count: count))))
                    } else {
                        row.append(.blob([]))
                    }
                default: row.append(.null)
                }
            }
            rows.append(row)
        }
        return rows
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    public var changes: Int { Int(sqlite3_changes(handle)) }

    /// Runs `body` in an IMMEDIATE transaction; rolls back if it throws.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    public var userVersion: Int {
        get throws {
            if case .integer(let value)? = try query("PRAGMA user_version").first?.first { return Int(value) }
            return 0
        }
    }
}

extension SQLiteDatabase.Value {
    public var text: String? { if case .text(let value) = self { return value } else { return nil } }
    public var integer: Int64? { if case .integer(let value) = self { return value } else { return nil } }
    public var blob: [UInt8]? { if case .blob(let value) = self { return value } else { return nil } }
}
