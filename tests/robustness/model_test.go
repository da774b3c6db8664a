package main

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

func TestModelAcceptsAndRejectsKnownHistories(t *testing.T) {
	const k = "/registry/pods/ns0/pod-00"
	get := func(call, ret int64, found bool, v string, mod int64) kvOp {
		return kvOp{kind: opGet, key: k, call: call, ret: ret, found: found, curValue: v, curMod: mod}
	}
	put := func(call, ret int64, v string, exp, rev int64, ok bool) kvOp {
		return kvOp{kind: opPut, key: k, value: v, expected: exp, call: call, ret: ret, succeeded: ok, revision: rev}
	}
	del := func(call, ret int64, exp, rev int64, ok bool) kvOp {
		return kvOp{kind: opDelete, key: k, expected: exp, call: call, ret: ret, succeeded: ok, revision: rev}
	}
	openDel := func(call int64, exp int64) kvOp {
		return kvOp{kind: opDelete, key: k, expected: exp, call: call, ret: pending}
	}
	cases := []struct {
		name string
		ops  []kvOp
		want bool
	}{
		{"create then read", []kvOp{put(0, 1, "a", 0, 2, true), get(2, 3, true, "a", 2)}, true},
		{"stale read after an acknowledged create", []kvOp{put(0, 1, "a", 0, 2, true), get(2, 3, false, "", 0)}, false},
		{"concurrent read sees the old state", []kvOp{put(0, 5, "a", 0, 2, true), get(1, 2, false, "", 0)}, true},
		{"two creates of one key both succeed", []kvOp{put(0, 1, "a", 0, 2, true), put(2, 3, "b", 0, 3, true)}, false},
		{"update with the right precondition", []kvOp{put(0, 1, "a", 0, 2, true), put(2, 3, "b", 2, 5, true), get(4, 5, true, "b", 5)}, true},
		{"lost update: read goes back", []kvOp{put(0, 1, "a", 0, 2, true), put(2, 3, "b", 2, 5, true), get(4, 5, true, "a", 2)}, false},
		{"failed precondition reports the current value", []kvOp{put(0, 1, "a", 0, 2, true), {kind: opPut, key: k, value: "b", expected: 1, call: 2, ret: 3, found: true, curValue: "a", curMod: 2}}, true},
		{"failed precondition that should have succeeded", []kvOp{put(0, 1, "a", 0, 2, true), {kind: opPut, key: k, value: "b", expected: 2, call: 2, ret: 3, found: true, curValue: "a", curMod: 2}}, false},
		{"revision must grow", []kvOp{put(0, 1, "a", 0, 4, true), put(2, 3, "b", 4, 3, true)}, false},
		{"delete then absent", []kvOp{put(0, 1, "a", 0, 2, true), del(2, 3, 2, 3, true), get(4, 5, false, "", 0)}, true},
		{"unknown delete took effect", []kvOp{put(0, 1, "a", 0, 2, true), openDel(2, 2), get(4, 5, false, "", 0)}, true},
		{"unknown delete did not take effect", []kvOp{put(0, 1, "a", 0, 2, true), openDel(2, 2), get(4, 5, true, "a", 2)}, true},
		{"unknown delete cannot resurrect", []kvOp{put(0, 1, "a", 0, 2, true), openDel(2, 2), get(4, 5, false, "", 0), get(6, 7, true, "a", 2)}, false},
	}
	for _, c := range cases {
		ops := append([]kvOp(nil), c.ops...)
		got := porcupine.CheckOperations(kvModel(), porcupineOps(ops))
		if got != c.want {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.want)
		}
	}
}
