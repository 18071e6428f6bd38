//! Random secrets for keys and tokens, from the operating system's secure source.

/// 32 bytes from the operating system's secure random source.
pub fn random_secret() -> std::io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(secret)
}
