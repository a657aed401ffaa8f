//! The mio driver: the only rudp code that reads the clock or touches a socket (owned by the driver work).
