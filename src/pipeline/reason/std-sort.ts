/**
 * libstdc++'s `std::sort` (introsort: median-of-three pivot to the front, unguarded partition, heap sort past
 * depth 2·⌊log2 n⌋, 16-element threshold, final insertion sort), step for step on an index array. torch's CPU
 * `sort(stable=False)` runs it on (value, index) pairs when x86-simd-sort is not taken, so the ORDER OF EQUAL
 * VALUES — which decides which tied tokens top-p drops — is this algorithm's; pinned by v12_sampling_tiny
 * row 3 ("ties"). `less(a, b)` compares two indices' keys.
 */
export function stdSort(arr: number[], less: (a: number, b: number) => boolean): number[] {
  const n = arr.length;
  const swap = (i: number, j: number) => {
    const t = arr[i];
    arr[i] = arr[j];
    arr[j] = t;
  };
  const medianToFirst = (r: number, a: number, b: number, c: number) => {
    if (less(arr[a], arr[b])) {
      if (less(arr[b], arr[c])) swap(r, b);
      else if (less(arr[a], arr[c])) swap(r, c);
      else swap(r, a);
    } else if (less(arr[a], arr[c])) swap(r, a);
    else if (less(arr[b], arr[c])) swap(r, c);
    else swap(r, b);
  };
  const partition = (first: number, last: number, pivot: number) => {
    for (;;) {
      while (less(arr[first], arr[pivot])) first++;
      last--;
      while (less(arr[pivot], arr[last])) last--;
      if (!(first < last)) return first;
      swap(first, last);
      first++;
    }
  };
  // partial_sort(first, last, last) = make_heap + sort_heap with __adjust_heap
  const heapSort = (first: number, last: number) => {
    const adjust = (hole: number, len: number, val: number) => {
      const top = hole;
      let child = hole;
      while (child < Math.floor((len - 1) / 2)) {
        child = 2 * (child + 1);
        if (less(arr[first + child], arr[first + child - 1])) child--;
        arr[first + hole] = arr[first + child];
        hole = child;
      }
      if ((len & 1) === 0 && child === Math.floor((len - 2) / 2)) {
        child = 2 * (child + 1);
        arr[first + hole] = arr[first + child - 1];
        hole = child - 1;
      }
      let parent = Math.floor((hole - 1) / 2);
      while (hole > top && less(arr[first + parent], val)) {
        arr[first + hole] = arr[first + parent];
        hole = parent;
        parent = Math.floor((hole - 1) / 2);
      }
      arr[first + hole] = val;
    };
    const len = last - first;
    if (len >= 2) for (let p = Math.floor((len - 2) / 2); p >= 0; p--) adjust(p, len, arr[first + p]);
    for (let l = last - 1; l - first > 0; l--) {
      const v = arr[l];
      arr[l] = arr[first];
      adjust(0, l - first, v);
    }
  };
  const introsort = (first: number, last: number, depth: number) => {
    while (last - first > 16) {
      if (depth === 0) {
        heapSort(first, last);
        return;
      }
      depth--;
      medianToFirst(first, first + 1, first + ((last - first) >> 1), last - 1);
      const cut = partition(first + 1, last, first);
      introsort(cut, last, depth);
      last = cut;
    }
  };
  const linearInsert = (i: number) => {
    const v = arr[i];
    let j = i - 1;
    while (less(v, arr[j])) {
      arr[j + 1] = arr[j];
      j--;
    }
    arr[j + 1] = v;
  };
  const insertion = (first: number, last: number) => {
    for (let i = first + 1; i < last; i++) {
      if (less(arr[i], arr[first])) {
        const v = arr[i];
        for (let j = i; j > first; j--) arr[j] = arr[j - 1];
        arr[first] = v;
      } else linearInsert(i);
    }
  };
  if (n < 2) return arr;
  introsort(0, n, 2 * (31 - Math.clz32(n)));
  if (n > 16) {
    insertion(0, 16);
    for (let i = 16; i < n; i++) linearInsert(i);
  } else insertion(0, n);
  return arr;
}
