//! What a UART receiver makes of bytes sent at another baud rate (pure).
//!
//! The sender serialises each byte as 8N1: a start bit (low), 8 data bits LSB first, a stop bit
//! (high), and the line idles high between bytes. The receiver waits for a falling edge, checks
//! the start bit half a bit later, samples the data bits in their middle and then the stop bit,
//! all at its own rate. A low stop bit is a framing error; the receiver still delivers the byte
//! it shifted in (CH340/CP210x bridges hand it up as is; a driver that marks errors would give
//! 0x00 instead). A false start (line high again at mid start bit) delivers nothing.
//!
//! Each call treats its input as one burst on an idle line, so a chunk boundary resynchronises
//! the receiver; the simulator sends whole write-sized chunks, which is also where a real line
//! tends to go idle.

/// Relative rate mismatch up to which a UART still samples every bit in the right slot: the stop
/// bit sampled at 9.5 receiver bits must land inside the sender's 10th bit, which allows about
/// ±5 %; 3 % is the usual engineering margin, so below it we skip the bit-level model.
pub const BAUD_TOLERANCE: f64 = 0.03;

/// Whether a receiver at `rx` reads a sender at `tx` without errors (within [`BAUD_TOLERANCE`]).
pub fn rates_match(tx: u32, rx: u32) -> bool {
    if tx == rx {
        return true;
    }
    if tx == 0 || rx == 0 {
        return false;
    }
    (f64::from(tx) - f64::from(rx)).abs() / f64::from(tx) <= BAUD_TOLERANCE
}

/// The bytes a receiver at `rx_baud` delivers when `bytes` are sent at `tx_baud`.
///
/// Identity when the rates match within [`BAUD_TOLERANCE`]; otherwise the bit-level model above.
pub fn resample(bytes: &[u8], tx_baud: u32, rx_baud: u32) -> Vec<u8> {
    if rates_match(tx_baud, rx_baud) {
        return bytes.to_vec();
    }
    if tx_baud == 0 || rx_baud == 0 || bytes.is_empty() {
        return Vec::new();
    }
    Line::new(bytes, tx_baud, rx_baud).receive()
}

/// The sender's waveform on a common time base.
///
/// Time is counted in ticks of 1/(2·tx·rx) s, so a sender bit lasts `2·rx` ticks and half a
/// receiver bit lasts `tx` ticks: every instant we need is an integer.
struct Line<'a> {
    bytes: &'a [u8],
    tx_bit: u64,
    rx_half_bit: u64,
}

impl<'a> Line<'a> {
    fn new(bytes: &'a [u8], tx_baud: u32, rx_baud: u32) -> Self {
        Line {
            bytes,
            tx_bit: 2 * u64::from(rx_baud),
            rx_half_bit: u64::from(tx_baud),
        }
    }

    fn total_bits(&self) -> u64 {
        self.bytes.len() as u64 * 10
    }

    /// Level of the sender's `k`-th bit (idle high outside the burst).
    fn bit(&self, k: u64) -> bool {
        if k >= self.total_bits() {
            return true;
        }
        let byte = self.bytes[(k / 10) as usize];
        match k % 10 {
            0 => false,
            9 => true,
            i => byte >> (i - 1) & 1 == 1,
        }
    }

    fn level_at(&self, t: u64) -> bool {
        self.bit(t / self.tx_bit)
    }

    /// The first falling edge at or after `t`: the start of a low bit that follows a high one.
    fn next_falling_edge(&self, t: u64) -> Option<u64> {
        let mut k = t.div_ceil(self.tx_bit);
        while k < self.total_bits() {
            let prev_high = k == 0 || self.bit(k - 1);
            if prev_high && !self.bit(k) {
                return Some(k * self.tx_bit);
            }
            k += 1;
        }
        None
    }

    fn receive(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut t = 0u64;
        while let Some(edge) = self.next_falling_edge(t) {
            let sample = |half_bits: u64| self.level_at(edge + half_bits * self.rx_half_bit);
            if sample(1) {
                // False start: the line is high again in the middle of the start bit.
                t = edge + self.rx_half_bit;
                continue;
            }
            let mut byte = 0u8;
            for i in 0..8u64 {
                if sample(3 + 2 * i) {
                    byte |= 1 << i;
                }
            }
            // The stop bit is sampled but, framing error or not, the byte is delivered.
            let _stop_ok = sample(19);
            out.push(byte);
            t = edge + 19 * self.rx_half_bit;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANNER: &[u8] = b"\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,6)\r\n\r\n";

    #[test]
    fn same_rate_is_identity() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(resample(&all, 115_200, 115_200), all);
        assert_eq!(resample(BANNER, 74_880, 74_880), BANNER);
        // The bit model itself is exact at equal rates, not only the fast path.
        assert_eq!(Line::new(&all, 9600, 9600).receive(), all);
    }

    #[test]
    fn small_mismatch_is_still_readable() {
        // 74880 vs 76800 is 2.6 %: within tolerance, and the bit model agrees.
        assert_eq!(resample(BANNER, 74_880, 76_800), BANNER);
        assert_eq!(Line::new(BANNER, 74_880, 76_800).receive(), BANNER);
        assert_eq!(Line::new(BANNER, 115_200, 111_000).receive(), BANNER);
    }

    #[test]
    fn banner_read_at_115200_is_garbage() {
        let got = resample(BANNER, 74_880, 115_200);
        assert_ne!(got, BANNER);
        assert!(
            !got.is_empty(),
            "a faster receiver sees more edges, not silence"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("ets Jan"), "{text:?}");
        assert!(!text.contains("boot mode"), "{text:?}");
    }

    #[test]
    fn reading_115200_at_74880_is_garbage_too() {
        let msg = b"Hello from the app at 115200\r\n";
        let got = resample(msg, 115_200, 74_880);
        assert_ne!(got, msg);
        assert!(
            got.len() < msg.len(),
            "a slower receiver swallows bytes: {got:?}"
        );
    }

    #[test]
    fn known_waveform_at_double_rate() {
        // 0xFF at 9600 is a single low start bit; a receiver at 19200 sees a start bit lasting
        // two of its bits, reads bit 0 low and the rest high: 0xFE.
        assert_eq!(resample(&[0xFF], 9600, 19_200), vec![0xFE]);
        // 0x00 sent at half the receiver's speed: 9 low sender bits = 18 receiver bits, so the
        // receiver sees 0x00 with a framing error, then (line still low) no new edge.
        assert_eq!(resample(&[0x00], 9600, 19_200), vec![0x00]);
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(resample(&[], 9600, 115_200), Vec::<u8>::new());
        assert_eq!(resample(b"abc", 0, 115_200), Vec::<u8>::new());
        assert!(rates_match(74_880, 74_880));
        assert!(!rates_match(74_880, 115_200));
        assert!(!rates_match(0, 115_200));
    }
}
