/// The Unibus release, shown by `--version` of both executables.
public enum UnibusVersion {
    public static let current = "0.1.0"
}
