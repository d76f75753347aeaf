//! Password hashing off the event loop: Argon2id on one worker thread fed
//! by a bounded channel, its answers handed back through a second channel
//! and a `mio::Waker`, so a login never stalls the other clients.
//!
//! Parameters (OWASP's recommended minimum for Argon2id): 19 MiB of
//! memory, 2 passes, 1 lane. One hash took 127-205 ms on this shared
//! 2-core x86_64 machine under load (`cargo test --lib hashes_verify --
//! --nocapture`); a Raspberry Pi 4 is slower still, which is why it runs
//! here and not on the loop. One worker keeps the memory at 19 MiB
//! whatever the load (docs/protocol.md, "Accounts").

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::chat::accounts::{AuthDone, AuthJob, Work};

/// Memory per hash, KiB.
pub const M_COST_KIB: u32 = 19 * 1024;
/// Passes over the memory.
pub const T_COST: u32 = 2;
/// Lanes.
pub const P_COST: u32 = 1;

fn argon2() -> Argon2<'static> {
    // The constants are within Argon2's bounds: `new` cannot fail.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// 32 random bytes from the system.
pub fn random32() -> Result<[u8; 32], String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| format!("no randomness from the system: {e}"))?;
    Ok(b)
}

/// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) for `password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = random32()?;
    let salt = SaltString::encode_b64(&salt[..16]).map_err(|e| e.to_string())?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (with the parameters
/// the string names, so older hashes keep working if ours change).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

fn run(job: AuthJob) -> AuthDone {
    let mut done = AuthDone::refused(job.id);
    let Ok(token) = random32() else {
        return done;
    };
    done.token = token;
    done.refused = false;
    match job.work {
        Work::Hash { password } => match hash_password(&password) {
            Ok(h) => {
                done.ok = true;
                done.hash = Some(h);
            }
            Err(e) => {
                log::error!("auth: cannot hash a password: {e}");
                done.refused = true;
            }
        },
        Work::Verify {
            hash,
            password,
            new_password,
        } => {
            done.ok = verify_password(&hash, &password);
            if done.ok
                && let Some(new) = new_password
            {
                match hash_password(&new) {
                    Ok(h) => done.hash = Some(h),
                    Err(e) => {
                        log::error!("auth: cannot hash a password: {e}");
                        done.refused = true;
                    }
                }
            }
        }
    }
    done
}

/// The worker thread and its two channels.
pub(super) struct Worker {
    jobs: SyncSender<AuthJob>,
    done: Receiver<AuthDone>,
}

impl Worker {
    /// Starts the thread; at most `queue` jobs wait for it.
    pub fn start(queue: usize, waker: mio::Waker) -> std::io::Result<Worker> {
        let (jobs, job_rx) = mpsc::sync_channel::<AuthJob>(queue);
        let (done_tx, done) = mpsc::channel::<AuthDone>();
        let waker = Arc::new(waker);
        std::thread::Builder::new()
            .name("wschat-auth".into())
            .spawn(move || {
                // Ends when the server drops its sender.
                while let Ok(job) = job_rx.recv() {
                    if done_tx.send(run(job)).is_err() {
                        break;
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("auth: cannot wake the event loop: {e}");
                    }
                }
            })?;
        Ok(Worker { jobs, done })
    }

    /// Hands a job to the thread, or answers it refused at once.
    pub fn submit(&self, job: AuthJob) -> Option<AuthDone> {
        match self.jobs.try_send(job) {
            Ok(()) => None,
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                Some(AuthDone::refused(j.id))
            }
        }
    }

    /// Answers ready now.
    pub fn ready(&self) -> Vec<AuthDone> {
        self.done.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let t0 = std::time::Instant::now();
        let a = hash_password("correct horse").unwrap();
        // A figure for the docs, not an assertion (a shared machine).
        eprintln!("one Argon2id hash: {} ms", t0.elapsed().as_millis());
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password(&a, "correct horse"));
        assert!(!verify_password(&a, "correct horsE"));
        assert!(!verify_password("not a hash", "correct horse"));
    }
}
