//! Kubernetes resource quantities (`1Gi`, `500m`, `1e3`) in the canonical form the API
//! server stores: it parses every quantity it is sent and writes it back canonically, so an
//! object applied with `1024Mi` is read back with `1Gi`, and `1000m` CPU as `1`.
//!
//! k8s-openapi's `Quantity` is only the string, and neither kube nor k8s-openapi parses it,
//! so this is a port of apimachinery's `resource.Quantity` canonicalisation
//! (`CanonicalizeBytes`) for the values this operator writes: a decimal number with an SI
//! suffix (`n` … `E`), a binary one (`Ki` … `Ei`) or an exponent (`e3`). The operator
//! canonicalises what it applies, so that an apply equals what the API server holds (no
//! PATCH on every reconcile), and compares spool sizes by value, so that `1024Mi` and `1Gi`
//! are one size.
//!
//! Not here: arithmetic on quantities, or the CRD's validation of them.

/// Decimal suffixes by power of ten (a multiple of three from -9 to 18).
const DECIMAL: [(i32, &str); 10] = [
    (-9, "n"),
    (-6, "u"),
    (-3, "m"),
    (0, ""),
    (3, "k"),
    (6, "M"),
    (9, "G"),
    (12, "T"),
    (15, "P"),
    (18, "E"),
];

/// Binary suffixes by power of 1024.
const BINARY: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// How a quantity was written, which its canonical form keeps where it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// A parsed quantity: `mantissa × 10^exp10 × 1024^exp1024`, negative or not.
#[derive(Clone, Copy, Debug)]
struct Parsed {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp1024: u32,
    format: Format,
}

fn parse(text: &str) -> Option<Parsed> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let mut mantissa: u128 = 0;
    for d in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(d - b'0'))?;
    }
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let (format, exp1024) = match suffix {
        "Ki" => (Format::BinarySi, 1),
        "Mi" => (Format::BinarySi, 2),
        "Gi" => (Format::BinarySi, 3),
        "Ti" => (Format::BinarySi, 4),
        "Pi" => (Format::BinarySi, 5),
        "Ei" => (Format::BinarySi, 6),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            exp10 = exp10.checked_add(s[1..].parse::<i32>().ok()?)?;
            (Format::DecimalExponent, 0)
        }
        s => {
            let (power, _) = DECIMAL.iter().find(|(_, name)| *name == s)?;
            exp10 = exp10.checked_add(*power)?;
            (Format::DecimalSi, 0)
        }
    };
    Some(Parsed {
        negative,
        mantissa,
        exp10,
        exp1024,
        format,
    })
}

fn pow10(n: u32) -> Option<u128> {
    10u128.checked_pow(n)
}

/// `value` as an exact integer, if it is one (and fits).
fn as_integer(mantissa: u128, exp10: i32) -> Option<u128> {
    if exp10 >= 0 {
        mantissa.checked_mul(pow10(exp10.unsigned_abs())?)
    } else {
        let divisor = pow10(exp10.unsigned_abs())?;
        mantissa.is_multiple_of(divisor).then(|| mantissa / divisor)
    }
}

/// The canonical text of quantity `text` as the API server stores it, or `None` when it is
/// not a quantity (or too large for this port, which the API server would refuse too).
pub fn canonical(text: &str) -> Option<String> {
    let q = parse(text)?;
    let sign = if q.negative { "-" } else { "" };
    // The value with the binary factor folded in: `mantissa × 10^exp10`.
    let mantissa = q.mantissa.checked_mul(1024u128.checked_pow(q.exp1024)?)?;
    if mantissa == 0 {
        return Some("0".into());
    }
    let mut format = q.format;
    if format == Format::BinarySi {
        // Below 1024, or not a whole number: shown in decimal so nothing is rounded.
        match as_integer(mantissa, q.exp10) {
            Some(n) if n >= 1024 => {
                let (mut n, mut power) = (n, 0usize);
                while n.is_multiple_of(1024) && power + 1 < BINARY.len() {
                    n /= 1024;
                    power += 1;
                }
                return Some(format!("{sign}{n}{}", BINARY[power]));
            }
            _ => format = Format::DecimalSi,
        }
    }
    let (mut m, mut e) = (mantissa, q.exp10);
    while m.is_multiple_of(10) {
        m /= 10;
        e += 1;
    }
    // Nothing finer than a nano: smaller amounts are rounded up (away from zero).
    if e < -9 {
        let divisor = pow10((-9 - e).unsigned_abs())?;
        m = m.div_ceil(divisor);
        e = -9;
        while m.is_multiple_of(10) {
            m /= 10;
            e += 1;
        }
    }
    // Exponents are multiples of three (a suffix each).
    while e.rem_euclid(3) != 0 {
        m = m.checked_mul(10)?;
        e -= 1;
    }
    match format {
        Format::DecimalExponent if e == 0 => Some(format!("{sign}{m}")),
        Format::DecimalExponent => Some(format!("{sign}{m}e{e}")),
        _ => {
            if e > 18 {
                m = m.checked_mul(pow10((e - 18).unsigned_abs())?)?;
                e = 18;
            }
            let (_, suffix) = DECIMAL.iter().find(|(p, _)| *p == e)?;
            Some(format!("{sign}{m}{suffix}"))
        }
    }
}

/// `text` in canonical form, or as it is when it is not a quantity (the API server would
/// refuse it; the operator does not hide that by changing it).
pub fn canonical_or_same(text: &str) -> String {
    canonical(text).unwrap_or_else(|| text.to_string())
}

/// True when `a` and `b` are the same amount (`1024Mi` and `1Gi`); texts that are not
/// quantities are equal only when they are the same text.
pub fn same(a: &str, b: &str) -> bool {
    canonical_or_same(a) == canonical_or_same(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases of apimachinery's `TestQuantityParse` / `TestQuantityCanonicalizeBytes` that
    /// this operator can meet, and the API server's answers.
    #[test]
    fn quantities_are_written_back_as_the_api_server_writes_them() {
        let cases = [
            ("0", "0"),
            ("0Mi", "0"),
            ("0.0", "0"),
            ("-0", "0"),
            ("1", "1"),
            ("+1", "1"),
            ("1.0", "1"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("0.1", "100m"),
            (".5", "500m"),
            ("5.", "5"),
            ("100m", "100m"),
            ("0.1m", "100u"),
            ("1n", "1n"),
            ("0.1n", "1n"),
            ("1.01n", "2n"),
            ("1024Mi", "1Gi"),
            ("1Gi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1.5Gi", "1536Mi"),
            ("1.50Gi", "1536Mi"),
            ("1024Gi", "1Ti"),
            ("1048576Ki", "1Gi"),
            ("1100Ki", "1100Ki"),
            ("1Ki", "1Ki"),
            ("0.5Ki", "512"),
            ("512", "512"),
            ("1024", "1024"),
            ("1025", "1025"),
            ("0.1Ki", "102400m"),
            ("1000", "1k"),
            ("1k", "1k"),
            ("1000k", "1M"),
            ("128Mi", "128Mi"),
            ("100M", "100M"),
            ("1e3", "1e3"),
            ("1000e0", "1e3"),
            ("1E3", "1e3"),
            ("12e6", "12e6"),
            ("1.5e3", "1500"),
            ("1e-3", "1e-3"),
            ("1E", "1E"),
            ("1000E", "1000E"),
            ("-1Gi", "-1Gi"),
            ("-1000m", "-1"),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(input, want)| canonical(input).as_deref() != Some(*want))
            .map(|(input, want)| format!("{input}: want {want}, got {:?}", canonical(input)))
            .collect();
        assert_eq!(wrong, Vec::<String>::new());
    }

    #[test]
    fn what_is_not_a_quantity_is_left_alone() {
        for text in [
            "", "Gi", "abc", "1.2.3", "1Zi", "1 Gi", "1GiB", "--1", "1e", ".",
        ] {
            assert_eq!(canonical(text), None, "{text}");
            assert_eq!(canonical_or_same(text), text);
        }
    }

    #[test]
    fn equal_amounts_are_the_same_whatever_their_spelling() {
        assert!(same("1024Mi", "1Gi"));
        assert!(same("1000m", "1"));
        assert!(same("0.5Gi", "512Mi"));
        assert!(!same("1G", "1Gi"));
        assert!(!same("10Gi", "1Gi"));
        assert!(same("junk", "junk"));
        assert!(!same("junk", "1Gi"));
    }
}
