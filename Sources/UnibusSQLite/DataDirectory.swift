import Foundation

/// Why a data directory (a node's, or a client's local store) cannot be used.
public struct DataDirectoryError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// A directory that holds secrets (stores, key files): created 0700, refused
/// when group or others can reach it, never followed through a link.
public enum DataDirectory {
    /// Creates the data directory 0700, or checks an existing one: a
    /// directory that group or others can reach is refused with the command
    /// that fixes it (the store and key files inside are the node's secrets).
    public static func prepare(_ directory: String) throws(DataDirectoryError) {
        var info = stat()
        if lstat(directory, &info) != 0 {
            guard errno == ENOENT else { throw DataDirectoryError("cannot use the data directory \(directory): \(String(cString: strerror(errno)))") }
            // The parent, by hand: NSString.deletingLastPathComponent traps on
            // some short relative paths (a one-letter "d" killed `unibusd init`).
            let parent = directory.lastIndex(of: "/").map { String(directory[..<$0]) } ?? ""
            if !parent.isEmpty {
                try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            }
            guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
                throw DataDirectoryError("cannot create the data directory \(directory): \(String(cString: strerror(errno)))")
            }
            guard lstat(directory, &info) == 0 else { throw DataDirectoryError("cannot use the data directory \(directory)") }
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw DataDirectoryError("\(directory) is not a directory (symbolic links are not followed); give the data directory itself")
        }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw DataDirectoryError("the data directory \(directory) is accessible to others (mode \(String(mode, radix: 8))); run `chmod 700 \(directory)`")
        }
    }

}

/// `flock` on `DIR/lock`, shared by every store of this process on the same
/// directory (tests reopen a store in-process) and exclusive between
/// processes. Released when the last holder releases it.
public final class DirectoryLock: @unchecked Sendable {
    // @unchecked: `released` is guarded by `DirectoryLock.registryLock`.
    private static let registryLock = NSLock()
    nonisolated(unsafe) private static var held: [String: (fd: Int32, holders: Int)] = [:]
    private let key: String
    private var released = false

    private init(key: String) {
        self.key = key
    }

    public static func acquire(_ directory: String) throws(DataDirectoryError) -> DirectoryLock {
        let key = URL(fileURLWithPath: directory).standardizedFileURL.path
        registryLock.lock()
        defer { registryLock.unlock() }
        if let entry = held[key] {
            held[key] = (entry.fd, entry.holders + 1)
            return DirectoryLock(key: key)
        }
        let path = directory + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DataDirectoryError("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno == EWOULDBLOCK ? "another unibusd (a running node, or init) is using \(directory); stop it first"
                : "cannot lock \(path): \(String(cString: strerror(errno)))"
            close(fd)
            throw DataDirectoryError(reason)
        }
        held[key] = (fd, 1)
        return DirectoryLock(key: key)
    }

    public func release() {
        Self.registryLock.lock()
        defer { Self.registryLock.unlock() }
        guard !released, let entry = Self.held[key] else { return }
        released = true
        if entry.holders <= 1 {
            close(entry.fd)
            Self.held[key] = nil
        } else {
            Self.held[key] = (entry.fd, entry.holders - 1)
        }
    }
}
