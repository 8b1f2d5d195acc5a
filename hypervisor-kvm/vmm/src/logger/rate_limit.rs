//! Rate limiting of the logs a guest can trigger: a guest must not flood the host log.

/// Counts events and says which to log: the first 10, then every power of two.
#[derive(Debug, Default)]
pub struct RateLimit {
    count: u64,
}

impl RateLimit {
    /// Records one event; true when it should be logged.
    pub fn hit(&mut self) -> bool {
        self.count += 1;
        self.count <= 10 || self.count.is_power_of_two()
    }

    /// Events seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ten_then_powers_of_two() {
        let mut limit = RateLimit::default();
        let logged: Vec<u64> = (1..=100).filter(|_| limit.hit()).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64]);
        assert_eq!(limit.count(), 100);
    }
}
