import Foundation
import UnibusClient
import UnibusCrypto

// Usage: SampleApp IDENTITY.json ROOT-NKEY NATS-URL CONTROL-URL
// Joins the bus as IDENTITY (a registered user), creates an encrypted room,
// sends itself one message through it, and archives the room.
let arguments = CommandLine.arguments
guard arguments.count == 5 else {
    FileHandle.standardError.write(Data("usage: SampleApp IDENTITY.json ROOT-NKEY NATS-URL CONTROL-URL\n".utf8))
    exit(2)
}
do {
    let identity = try IdentityFile.load(from: arguments[1])
    let configuration = UnibusClient.Configuration(identity: identity, dataPlane: [arguments[3]], controlPlane: [arguments[4]],
                                                   root: arguments[2])
    let client = try await UnibusClient.connect(configuration)
    let room = "sample-" + Hex.encode(Sodium.randomNonce(count: 4))
    try await client.createRoom(id: room, subject: "sample.\(room)")
    let messages = try await client.join(room)
    try await client.publish(Array("hello from an app that depends on Unibus by version".utf8), to: room)
    for await message in messages {
        print("received (\(message.protection.rawValue)): \(String(decoding: message.body, as: UTF8.self))")
        break
    }
    try await client.archiveRoom(room)
    await client.close()
} catch {
    FileHandle.standardError.write(Data("SampleApp: \(error)\n".utf8))
    exit(1)
}
