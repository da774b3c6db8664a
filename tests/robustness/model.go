package main

// The porcupine model: one etcd key under kube-apiserver's operations (linearizable Get,
// OptimisticPut and OptimisticDelete with GetOnFailure). Histories are partitioned by key;
// linearizability is local (Herlihy & Wing), and the revision's real-time order across keys
// is checked separately (checkRevisionOrder).
//
// Every value is unique, so a write whose outcome the client never learned is resolved from
// the store's history before the check (as etcd's robustness tests do): a put whose value is
// in the history took effect at that revision, one whose value is not never did and is
// dropped. An unknown delete is resolved when its precondition identifies the delete event;
// otherwise it stays open (porcupine may linearize it at any point after its call, or never).

import (
	"fmt"
	"sort"

	"github.com/anishathalye/porcupine"
)

// kvState is one key: absent, or its value and mod revision.
type kvState struct {
	exists bool
	value  string
	mod    int64
}

// step applies op to s; false if op cannot have returned what it returned in state s.
func step(s kvState, op *kvOp) (bool, kvState) {
	cur := int64(0)
	if s.exists {
		cur = s.mod
	}
	// A read (Get, or the Else(Get) of a failed precondition) saw exactly s.
	readMatches := op.found == s.exists && (!op.found || (op.curValue == s.value && op.curMod == s.mod))
	open := op.ret == pending && !op.resolved
	switch op.kind {
	case opGet:
		return readMatches, s
	case opPut:
		if open {
			// Unresolved puts are dropped before the check (see resolvePending); an open put
			// here would have an unknown revision.
			panic("open put in the linearizability check")
		}
		if op.succeeded {
			return cur == op.expected && op.revision > cur, kvState{exists: true, value: op.value, mod: op.revision}
		}
		return cur != op.expected && readMatches, s
	case opDelete:
		if open {
			if cur == op.expected && s.exists {
				return true, kvState{}
			}
			return true, s
		}
		if op.succeeded {
			return cur == op.expected && s.exists, kvState{}
		}
		return cur != op.expected && readMatches, s
	}
	return false, s
}

func kvModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, o := range history {
				k := o.Input.(*kvOp).key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], o)
			}
			sort.Strings(keys)
			var out [][]porcupine.Operation
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() interface{} { return kvState{} },
		Step: func(state, input, _ interface{}) (bool, interface{}) {
			return step(state.(kvState), input.(*kvOp))
		},
		Equal: func(a, b interface{}) bool { return a.(kvState) == b.(kvState) },
		DescribeOperation: func(input, _ interface{}) string {
			return describe(input.(*kvOp))
		},
		DescribeState: func(state interface{}) string {
			s := state.(kvState)
			if !s.exists {
				return "absent"
			}
			return fmt.Sprintf("%s@%d", s.value, s.mod)
		},
	}
}

func describe(op *kvOp) string {
	out := func() string {
		if op.ret == pending && !op.resolved {
			return "unknown (" + op.err + ")"
		}
		cur := "absent"
		if op.found {
			cur = fmt.Sprintf("%s@%d", op.curValue, op.curMod)
		}
		switch {
		case op.kind == opGet:
			return fmt.Sprintf("%s (rev %d)", cur, op.revision)
		case op.succeeded:
			return fmt.Sprintf("ok at %d", op.revision)
		default:
			return "failed, current " + cur
		}
	}()
	switch op.kind {
	case opGet:
		return fmt.Sprintf("get(%s) -> %s", op.key, out)
	case opPut:
		return fmt.Sprintf("put(%s, %s, if mod=%d) -> %s", op.key, op.value, op.expected, out)
	default:
		return fmt.Sprintf("delete(%s, if mod=%d) -> %s", op.key, op.expected, out)
	}
}

// porcupineOps turns the (resolved) kv history into porcupine operations.
func porcupineOps(ops []kvOp) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for i := range ops {
		o := &ops[i]
		out = append(out, porcupine.Operation{ClientId: o.client, Input: o, Output: o, Call: o.call, Return: o.ret})
	}
	return out
}
