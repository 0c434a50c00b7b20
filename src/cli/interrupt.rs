//! Ctrl-C for the commands that run long (eval, datagen, finetune): the first press asks the run to stop — it says
//! what it is finishing, and keeps what is done — and the second quits at once with exit status 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;

/// The installed Ctrl-C handler: whether a stop was asked for, and a notification for async waiters.
pub(super) struct Interrupt {
    requested: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Interrupt {
    /// Installs the process's Ctrl-C handler. On the first press it prints `finishing` (what the run does before it
    /// stops) and calls `on_first` (for runs that do not wait on [`Interrupt::notified`]).
    pub(super) fn install(finishing: &'static str, on_first: impl Fn() + Send + 'static) -> anyhow::Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        let notify = Arc::new(Notify::new());
        let (handler_requested, handler_notify) = (requested.clone(), notify.clone());
        ctrlc::set_handler(move || {
            if handler_requested.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user does not want to wait.
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: {finishing} (Ctrl-C again to quit now)");
            on_first();
            // notify_one keeps a permit when nobody waits yet, so the press is seen at the next await.
            handler_notify.notify_one();
        })
        .context("installing the Ctrl-C handler")?;
        Ok(Self { requested, notify })
    }

    pub(super) fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub(super) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Passes a consumed notification on to the next waiter.
    pub(super) fn notify_again(&self) {
        self.notify.notify_one();
    }
}
