//! A Txn's shape, checked before it is proposed (etcd's `checkTxnRequest` and
//! `checkIntervals`), so a malformed request never reaches the log.

use crate::datastore::error::{Result, StoreError};
use crate::datastore::types::*;

/// Most operations in one Txn (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// Check a Txn's shape before it is proposed: etcd's `checkTxnRequest` and `checkIntervals`.
pub fn validate_txn(txn: &TxnRequest) -> Result<()> {
    check_txn_shape(txn)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(())
}

fn check_txn_shape(txn: &TxnRequest) -> Result<()> {
    let ops = txn.compare.len().max(txn.success.len()).max(txn.failure.len());
    if ops > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps {
            ops,
            max: MAX_TXN_OPS,
        });
    }
    if txn.compare.iter().any(|c| c.range.key.is_empty()) {
        return Err(StoreError::EmptyKey);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Range(r) if r.range.key.is_empty() => return Err(StoreError::EmptyKey),
            Op::Delete(d) if d.range.key.is_empty() => return Err(StoreError::EmptyKey),
            Op::Put(p) if p.key.is_empty() => return Err(StoreError::EmptyKey),
            Op::Put(p) if p.ignore_value && !p.value.is_empty() => return Err(StoreError::ValueProvided),
            Op::Put(p) if p.ignore_lease && p.lease != 0 => return Err(StoreError::LeaseProvided),
            Op::Txn(t) => check_txn_shape(t)?,
            _ => {}
        }
    }
    Ok(())
}

/// etcd's duplicate-key rule: within one branch no key is written twice, and no put falls in
/// a deleted range. A nested Txn's success and failure branches exclude each other, so the
/// same key may appear in both.
fn check_intervals(ops: &[Op]) -> Result<(Vec<Vec<u8>>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| {
            if let Op::Delete(d) = op {
                Some(d.range.clone())
            } else {
                None
            }
        })
        .collect();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let hits = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Op::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hits(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            if !puts.contains(k) {
                puts.push(k.clone());
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Op::Put(p) = op else { continue };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(StoreError::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}
