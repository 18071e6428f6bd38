//! Boxing a future where it is made. `Box::pin(f())` builds the future on the stack and then
//! copies all of it (its whole layout, kilobytes for a request's future) into the box; a
//! future written into an uninitialised box is built there in release builds (the language
//! does not promise it: it was checked in the release binary's code, where no `memcpy` of the
//! request future's size is left). A macro, not a function: passing the future to a
//! function, even an inlined one, brought the copy back.

/// `$future`, pinned in a box it was written into directly.
macro_rules! boxed {
    ($future:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $future))
    };
}

pub(crate) use boxed;
