import UnibusClient
import UnibusCrypto
import UnibusMembership
import UnibusWire

/// Hostile frames into `RoomKeyring.open`, the receiver's whole verdict path
/// (envelope, Megolm, signature, replay window, time window, zstd). The
/// first byte picks the input's use: raw bytes as a frame; edits applied to
/// a frame that a real sender sealed (so mutations reach checks random bytes
/// never pass); or, as a malicious member would, arbitrary inner-frame bytes
/// encrypted and signed under the member's real Megolm session (so the
/// inner-frame decoder and zstd run on hostile plaintext). Every input must
/// end in an opened frame or a named rejection: no crash, hang or unbounded
/// allocation.
private final class Fixture {
    let alice = Identity(), bob = Identity()
    let sender: RoomKeyring
    let receiver: RoomKeyring
    var frames: [[UInt8]] = []
    var outbound: RoomKeyring.Outbound?
    var header: [UInt8] = []
    let now: UInt64 = 1_800_000_000_000

    init() {
        let members: Set<String> = [alice.userNKey, bob.userNKey]
        sender = RoomKeyring(identity: alice)
        receiver = RoomKeyring(identity: bob)
        for (id, policy) in [("enc", RoomPolicy(compress: true)), ("sig", RoomPolicy(encrypt: false, sign: true))] {
            let room = RoomInfo(id: id, subject: "rooms.\(id)", owner: alice.userNKey, policy: policy)
            sender.setRoom(room, members: members)
            receiver.setRoom(room, members: members)
        }
        let outbound = sender.rotate(room: "enc", now: now)
        self.outbound = outbound
        header = FrameEnvelope.megolmHeader(sender: alice.signing.publicKey.bytes, sessionKey: outbound.session.signingKey.bytes)
        let share = sender.share(outbound, room: "enc", recipient: bob.userNKey, exchangeKey: bob.keyExchange.publicKey)
        try? receiver.acceptShare(room: "enc", sender: alice.userNKey, sessionID: outbound.session.sessionID,
                                  sealed: share.sealed, signature: share.signature,
                                  sessionSignature: sender.ownerSignature(outbound, room: "enc"))
        for (room, body) in [("enc", Array("hello".utf8)), ("enc", [UInt8](repeating: 7, count: 300)), ("sig", Array("signed".utf8))] {
            if let frame = try? sender.seal(room: room, contentType: "text/plain", body: body, now: now) { frames.append(frame) }
        }
    }
}

nonisolated(unsafe) private let fixture = Fixture()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRoomKeyring(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first, !fixture.frames.isEmpty else { return 0 }
    var frame: [UInt8]
    if mode % 5 == 4, let outbound = fixture.outbound {
        // A member's own session, encrypting whatever inner bytes it likes:
        // raw, or a well-formed inner frame whose body claims to be zstd
        // (hostile compressed data reaching the decompressor).
        let rest = Array(input.dropFirst())
        let inner = rest.first.map { $0 & 1 == 0 } ?? true ? rest
            : InnerFrame(room: "enc", timestamp: fixture.now, contentType: "x", compressed: true, body: Array(rest.dropFirst())).encoded()
        guard let message = try? inner.withUnsafeBytes({ plaintext in
            try fixture.header.withUnsafeBytes { try outbound.session.encrypt(plaintext, after: $0) }
        }) else { return 0 }
        frame = message.bytes
    } else if mode & 1 == 0 {
        frame = Array(input.dropFirst())
    } else {
        // Edits: (offset, byte) pairs over a sealed frame, then an optional cut.
        frame = fixture.frames[Int(mode >> 1) % fixture.frames.count]
        var index = 1
        while index + 1 < input.count, !frame.isEmpty {
            frame[Int(input[index]) % frame.count] ^= input[index + 1]
            index += 2
        }
        if input.count % 7 == 0, !frame.isEmpty { frame.removeLast(Int(input.last ?? 0) % frame.count) }
    }
    let room = mode % 5 == 4 || mode & 2 == 0 ? "enc" : "sig"
    // A fresh receiver state would make replays impossible to reach; this one
    // keeps its replay windows across inputs, as a live client does.
    _ = fixture.receiver.open(frame, room: room, now: fixture.now + UInt64(mode))
    return 0
}
