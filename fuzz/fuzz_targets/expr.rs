//! Rule expressions: any text compiles or is refused with an error; a compiled rule
//! evaluates without panicking on any feature values, NaN and infinities included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riskgate::expr::Expr;
use riskgate::features;

fuzz_target!(|data: &[u8]| {
    let (values_seed, src) = data.split_at(data.len().min(8));
    let Ok(src) = std::str::from_utf8(src) else { return };
    let Ok(expr) = Expr::compile(src, features::index_of) else { return };
    let specials = [0.0, 1.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, -0.0];
    let mut values = vec![0.0; features::COUNT];
    for (i, v) in values.iter_mut().enumerate() {
        let b = values_seed.get(i % values_seed.len().max(1)).copied().unwrap_or(0) as usize;
        *v = specials[(b + i) % specials.len()];
    }
    let _ = expr.eval(&values);
    let _ = expr.matches(&values);
    let _ = expr.features();
    assert_eq!(expr.source(), src);
});
