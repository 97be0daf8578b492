/*
 * apfdbg.machine._accel -- C fast paths for the Unicorn vCPU engines.
 *
 * Built by setuptools as a normal extension module so that `pip install` compiles it, but the
 * Python module itself is empty: everything below is plain C, loaded with ctypes.CDLL by
 * apfdbg/machine/accel.py and registered as Unicorn hooks through uclib.uc_hook_add.
 *
 * We do not link against libunicorn.  Python passes the addresses of the few Unicorn functions we
 * call (uc_reg_read, uc_emu_stop, uc_ctl) into struct apf_vcpu, and the Unicorn types and
 * constants we need are restated here (values from unicorn.h, Unicorn 2.1.4).
 *
 *   apf_block_hook   UC_HOOK_BLOCK: virtual time (instructions retired) and quantum stops.
 *   apf_fill_hook    UC_HOOK_TLB_FILL (engine in UC_TLB_VIRTUAL mode): the host's "EPT"
 *                    (frames swapped out by the host) plus the guest's own x86-64 paging.
 *   apf_insn_hook    UC_HOOK_CODE, only while a watchpoint exists: stops before the instruction
 *                    after a watched access (Python's memory hook cannot stop mid-instruction).
 *   apf_translate    the same page walk, for Python.
 *
 * See docs/accel.md for the design and the measured behaviour of Unicorn.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define APF_ABI_VERSION 5u
#define APF_API __attribute__((visibility("default")))

/* ---- Unicorn 2.1.4 definitions (unicorn.h, x86.h) ---------------------------------------- */
#define UCX_MEM_READ 16
#define UCX_MEM_WRITE 17
#define UCX_MEM_FETCH 18
#define UCX_PROT_READ 1u
#define UCX_PROT_WRITE 2u
#define UCX_PROT_EXEC 4u
#define UCX_X86_REG_CS 11
#define UCX_X86_REG_EFLAGS 25
#define UCX_X86_REG_CR0 50
#define UCX_X86_REG_CR3 53
#define UCX_X86_REG_CR4 54
#define UCX_X86_REG_MSR 248
#define UCX_CTL_TB_REQUEST_CACHE 8
#define UCX_CTL_TLB_FLUSH 11
#define UCX_CTL_IO_WRITE 1
#define UCX_CTL_IO_READ 2
#define UCX_CTL(type, nr, rw) ((int)((type) | ((nr) << 26) | ((unsigned)(rw) << 30)))

struct ucx_tlb_entry { /* uc_tlb_entry */
    uint64_t paddr;
    uint32_t perms; /* uc_prot */
};

struct ucx_x86_msr { /* uc_x86_msr */
    uint32_t rid;
    uint64_t value;
};

struct ucx_tb { /* uc_tb */
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
};

typedef int (*apf_reg_read_fn)(void *uc, int regid, void *value);
typedef int (*apf_emu_stop_fn)(void *uc);
typedef int (*apf_ctl_fn)(void *uc, int control, ...);
/* Python: instruction count of the block, or <= 0 = "stop before this block". */
typedef int64_t (*apf_miss_fn)(uint64_t addr, uint32_t size);

/* ---- x86 ------------------------------------------------------------------------------------ */
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_SMEP (1ull << 20)
#define CR4_SMAP (1ull << 21)
#define EFER_NXE (1ull << 11)
#define MSR_EFER 0xC0000080u
#define RFLAGS_AC (1ull << 18)

#define PTE_P (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_US (1ull << 2)
#define PTE_A (1ull << 5)
#define PTE_D (1ull << 6)
#define PTE_PS (1ull << 7)
#define PTE_XD (1ull << 63)
#define PTE_ADDR 0x000FFFFFFFFFF000ull
#define MAXPHYADDR 40
#define RSVD_PHYS (((1ull << 52) - 1) & ~((1ull << MAXPHYADDR) - 1))
#define PTE_ADDR_2M 0x000FFFFFFFE00000ull
#define PTE_ADDR_1G 0x000FFFFFC0000000ull

#define PFEC_P 1u
#define PFEC_W 2u
#define PFEC_U 4u
#define PFEC_RSVD 8u
#define PFEC_ID 16u

/* ---- public structures (mirrored by ctypes in accel.py; keep in sync, checked at load) ------ */
enum apf_stop {
    APF_STOP_NONE = 0,
    APF_STOP_BUDGET = 1, /* block hook: retired >= budget_end, block not run, not counted */
    APF_STOP_MISS = 2,   /* block hook: Python's miss callback said "stop before this block" */
    APF_STOP_FAULT = 3,  /* TLB fill denied: see apf_vcpu.fault */
    APF_STOP_IRQ_WINDOW = 4, /* block hook: an interrupt waits and RFLAGS.IF is now 1 */
    APF_STOP_WATCH = 5,  /* insn hook: the previous instruction touched a watched address */
};

enum apf_fault_kind {
    APF_FAULT_NONE = 0,
    APF_FAULT_HOST = 1,         /* a frame the access (or its page walk) needs is swapped out */
    APF_FAULT_GUEST_PF = 2,     /* guest paging violation: deliver #PF(error_code) */
    APF_FAULT_BEYOND_RAM = 3,   /* guest physical address outside RAM */
    APF_FAULT_NONCANONICAL = 4, /* non-canonical linear address (#GP / #SS) */
};

/* apf_translate flags */
#define APF_TR_SET_AD 1   /* set Accessed/Dirty like the CPU does (off for debugger reads) */
#define APF_TR_NO_HOST 2  /* ignore the host's swap state (debugger reads) */

struct apf_fault {
    uint32_t kind;       /* enum apf_fault_kind */
    uint32_t access;     /* UC_MEM_READ (16), UC_MEM_WRITE (17) or UC_MEM_FETCH (18) */
    uint64_t vaddr;      /* linear address (page aligned when it comes from the fill hook) */
    uint64_t paddr;      /* HOST / BEYOND_RAM: the guest physical address involved */
    uint64_t gfn;        /* HOST: the swapped-out frame */
    uint32_t error_code; /* GUEST_PF: x86 #PF error code (P, W, U, RSVD, I/D) */
    int32_t level;       /* HOST / BEYOND_RAM: 4..1 = paging-structure level read, 0 = the page */
    uint32_t user;       /* the access was made at CPL 3 */
    uint32_t count;      /* number of faults recorded since attach (debugging aid) */
};

struct apf_regs { /* what the page walk needs of the vCPU */
    uint64_t cr0, cr3, cr4, efer, rflags;
    uint32_t cpl;
    uint32_t have_efer; /* 0: efer not filled in, read it from the engine when needed */
};

struct apf_bent { /* block cache entry; icount == 0 marks a free slot */
    uint64_t addr;
    uint64_t asid;
    uint32_t size;
    uint32_t icount;
};

struct apf_vcpu {
    /* -- hot state, read and written by Python through the ctypes mirror -- */
    uint64_t retired;          /* instructions retired (virtual time of this vCPU) */
    uint64_t budget_end;       /* stop at the first block entry with retired >= budget_end */
    uint32_t stop_reason;      /* enum apf_stop, set by the hooks; Python clears it */
    uint32_t abi;              /* APF_ABI_VERSION */
    /* The last block counted (its icount is already in `retired`); doubles as the one-entry
     * memo of the hot path, so a block re-entered in a loop costs one compare and one add. */
    uint64_t cur_block_addr;
    uint32_t cur_block_size;
    uint32_t cur_block_icount;
    uint64_t cur_block_asid;
    uint64_t asid;             /* CR3 seen by the last TLB fill (|1), 0 when CR0.PG = 0 */
    struct apf_fault fault;    /* last denied fill (kind != 0 after a stop_reason 3) */
    /* -- statistics -- */
    uint64_t n_lookups;        /* block entries that missed the one-entry memo */
    uint64_t n_misses;         /* ... and the cache: miss callback calls */
    uint64_t n_fills, n_denies;
    /* -- memory -- */
    uint8_t *ram;
    uint64_t ram_size;
    uint8_t *frame_state;      /* one byte per 4 KiB frame, shared; non-zero = swapped out */
    /* -- Unicorn -- */
    void *uc;                  /* uc_engine* */
    apf_reg_read_fn reg_read;
    apf_emu_stop_fn emu_stop;
    apf_ctl_fn ctl;
    apf_miss_fn miss;          /* NULL: ask Unicorn (UC_CTL_TB_REQUEST_CACHE) for the icount */
    /* -- block cache (open addressing, power-of-two size) -- */
    struct apf_bent *tab;
    uint64_t tab_mask;
    uint64_t tab_used;
    /* -- interrupt window: an interrupt waits for IF = 1. While armed, Python sets budget_end to 0
     * so every block entry takes the slow branch, and the real budget end lives here. -- */
    uint64_t irq_window_end;   /* 0: not armed */
    uint32_t irq_window_skip;  /* let this many block entries pass (the STI/MOV SS shadow) */
    /* -- RF: set by Python just before an iretq that loads RFLAGS.RF = 1. A CPU clears RF once the
     * next instruction completes; Unicorn keeps it to the end of the next block, where pushf would
     * show it, so the block hook clears it at that block's entry. -- */
    uint32_t clear_rf;
    apf_reg_read_fn reg_write; /* uc_reg_write (same signature) */
    /* -- one byte per frame, shared: set when a TLB fill maps the frame for a guest access (the
     * "accessed" bit of the host's own mapping, as EPT A bits); the host pager reads and clears
     * them, then flushes the TLBs, to age frames for LRU. NULL: not tracked. -- */
    uint8_t *frame_access;
    /* -- set by Python's watchpoint memory hook; the insn hook stops before the next instruction -- */
    uint32_t watch_hit;
    uint32_t pad0;
};

/* No fill produces it (0 or CR3 | 1): makes the hot-path memo miss without losing cur_block_*. */
#define APF_ASID_NONE 2ull

/* ---- block cache ---------------------------------------------------------------------------- */
static inline uint64_t bhash(uint64_t addr, uint32_t size, uint64_t asid)
{
    uint64_t h = addr * 0x9E3779B97F4A7C15ull;
    h ^= ((uint64_t)size << 32) ^ (asid * 0xC2B2AE3D27D4EB4Full);
    h ^= h >> 29;
    return h;
}

static int cache_alloc(struct apf_vcpu *v, uint64_t n)
{
    struct apf_bent *t = calloc(n, sizeof *t);
    if (!t)
        return -1;
    free(v->tab);
    v->tab = t;
    v->tab_mask = n - 1;
    v->tab_used = 0;
    v->cur_block_asid = APF_ASID_NONE; /* the next block entry looks the cache up */
    return 0;
}

static inline uint32_t cache_get(const struct apf_vcpu *v, uint64_t addr, uint32_t size,
                                 uint64_t asid)
{
    uint64_t i = bhash(addr, size, asid) & v->tab_mask;
    for (;;) {
        const struct apf_bent *e = &v->tab[i];
        if (e->icount == 0)
            return 0;
        if (e->addr == addr && e->size == size && e->asid == asid)
            return e->icount;
        i = (i + 1) & v->tab_mask;
    }
}

static void cache_put(struct apf_vcpu *v, uint64_t addr, uint32_t size, uint64_t asid,
                      uint32_t icount)
{
    if ((v->tab_used + 1) * 2 > v->tab_mask + 1) { /* grow at 50 % load */
        struct apf_bent *old = v->tab;
        uint64_t oldn = v->tab_mask + 1, n = oldn * 2;
        struct apf_bent *t = calloc(n, sizeof *t);
        if (t) {
            v->tab = t;
            v->tab_mask = n - 1;
            v->tab_used = 0;
            for (uint64_t k = 0; k < oldn; k++)
                if (old[k].icount)
                    cache_put(v, old[k].addr, old[k].size, old[k].asid, old[k].icount);
            free(old);
        } else if (v->tab_used + 1 > v->tab_mask) {
            return; /* out of memory and full: just don't cache */
        }
    }
    uint64_t i = bhash(addr, size, asid) & v->tab_mask;
    for (;;) {
        struct apf_bent *e = &v->tab[i];
        if (e->icount == 0) {
            e->addr = addr;
            e->size = size;
            e->asid = asid;
            e->icount = icount;
            v->tab_used++;
            return;
        }
        if (e->addr == addr && e->size == size && e->asid == asid) {
            e->icount = icount;
            return;
        }
        i = (i + 1) & v->tab_mask;
    }
}

/* ---- the block hook -------------------------------------------------------------------------- */
static void __attribute__((noinline)) block_slow(struct apf_vcpu *v, void *uc, uint64_t addr,
                                                 uint32_t size)
{
    uint32_t ic;
    v->n_lookups++;
    ic = cache_get(v, addr, size, v->asid);
    if (!ic) {
        int64_t r;
        v->n_misses++;
        if (v->miss) {
            r = v->miss(addr, size);
        } else {
            struct ucx_tb tb;
            memset(&tb, 0, sizeof tb);
            if (v->ctl(uc, UCX_CTL(UCX_CTL_TB_REQUEST_CACHE, 2, UCX_CTL_IO_READ | UCX_CTL_IO_WRITE),
                       addr, &tb) == 0 && tb.pc == addr && tb.size == size)
                r = tb.icount;
            else
                r = 0;
        }
        if (r <= 0) {
            v->stop_reason = APF_STOP_MISS;
            v->emu_stop(uc);
            return;
        }
        ic = (uint32_t)r;
        cache_put(v, addr, size, v->asid, ic);
    }
    v->cur_block_addr = addr;
    v->cur_block_size = size;
    v->cur_block_icount = ic;
    v->cur_block_asid = v->asid;
    v->retired += ic;
}

APF_API void apf_insn_hook(void *uc, uint64_t addr, uint32_t size, void *user)
{
    struct apf_vcpu *v = (struct apf_vcpu *)user;
    (void)addr;
    (void)size;
    if (__builtin_expect(v->watch_hit, 0)) {
        v->watch_hit = 0;
        v->stop_reason = APF_STOP_WATCH;
        v->emu_stop(uc);
    }
}

APF_API void apf_block_hook(void *uc, uint64_t addr, uint32_t size, void *user)
{
    struct apf_vcpu *v = (struct apf_vcpu *)user;

    if (__builtin_expect(v->clear_rf, 0)) {
        uint64_t fl = 0;
        v->clear_rf = 0;
        if (v->reg_read(uc, UCX_X86_REG_EFLAGS, &fl) == 0 && (fl & (1ull << 16))) {
            fl &= ~(1ull << 16);
            v->reg_write(uc, UCX_X86_REG_EFLAGS, &fl);
        }
    }
    if (__builtin_expect(v->retired >= v->budget_end, 0)) {
        if (!v->irq_window_end || v->retired >= v->irq_window_end) {
            v->stop_reason = APF_STOP_BUDGET;
            v->emu_stop(uc);
            return;
        }
        /* QEMU ends a block after sti, popf and iret, so a block entry is the first point where
         * a newly set IF can let the waiting interrupt in. */
        if (v->irq_window_skip) {
            v->irq_window_skip--;
        } else {
            uint64_t fl = 0;
            if (v->reg_read(uc, UCX_X86_REG_EFLAGS, &fl) == 0 && (fl & 0x200)) {
                v->stop_reason = APF_STOP_IRQ_WINDOW;
                v->emu_stop(uc);
                return;
            }
        }
    }
    if (__builtin_expect(addr == v->cur_block_addr && size == v->cur_block_size &&
                         v->asid == v->cur_block_asid, 1)) {
        v->retired += v->cur_block_icount;
        return;
    }
    block_slow(v, uc, addr, size);
}

/* ---- the page walk --------------------------------------------------------------------------- */
static inline uint64_t rd64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static inline void or64(uint8_t *p, uint64_t bits)
{
    uint64_t x;
    memcpy(&x, p, 8);
    if ((x & bits) != bits) {
        x |= bits;
        memcpy(p, &x, 8);
    }
}

static uint64_t read_efer(struct apf_vcpu *v, struct apf_regs *r)
{
    if (!r->have_efer) {
        struct ucx_x86_msr m = {MSR_EFER, 0};
        if (v->uc && v->reg_read && v->reg_read(v->uc, UCX_X86_REG_MSR, &m) == 0)
            r->efer = m.value;
        else
            r->efer = 0;
        r->have_efer = 1;
    }
    return r->efer;
}

/* Fills r from the engine. rflags is read only when SMAP makes it matter (see walk()). */
static void read_regs(struct apf_vcpu *v, struct apf_regs *r)
{
    uint64_t cs = 0;
    memset(r, 0, sizeof *r);
    v->reg_read(v->uc, UCX_X86_REG_CR0, &r->cr0);
    if (r->cr0 & CR0_PG) {
        v->reg_read(v->uc, UCX_X86_REG_CR3, &r->cr3);
        v->reg_read(v->uc, UCX_X86_REG_CR4, &r->cr4);
        v->reg_read(v->uc, UCX_X86_REG_CS, &cs);
        if (r->cr4 & CR4_SMAP)
            v->reg_read(v->uc, UCX_X86_REG_EFLAGS, &r->rflags);
    }
    r->cpl = (uint32_t)(cs & 3);
}

static int record(struct apf_fault *f, uint32_t kind, uint64_t va, int access, uint32_t user)
{
    uint32_t count = f->count;
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->access = (uint32_t)(UCX_MEM_READ + access);
    f->vaddr = va;
    f->user = user;
    f->count = count + 1;
    return (int)kind;
}

/* Checks that guest physical [pa, pa + 8) is RAM and its frame resident. */
static inline int check_frame(struct apf_vcpu *v, uint64_t pa, uint64_t va, int access,
                              uint32_t user, int flags, int level, struct apf_fault *f)
{
    if (pa >= v->ram_size || v->ram_size - pa < 8) {
        record(f, APF_FAULT_BEYOND_RAM, va, access, user);
        f->paddr = pa;
        f->level = level;
        return APF_FAULT_BEYOND_RAM;
    }
    if (!(flags & APF_TR_NO_HOST) && v->frame_state && v->frame_state[pa >> 12]) {
        record(f, APF_FAULT_HOST, va, access, user);
        f->paddr = pa;
        f->gfn = pa >> 12;
        f->level = level;
        return APF_FAULT_HOST;
    }
    if ((flags & APF_TR_SET_AD) && v->frame_access)
        v->frame_access[pa >> 12] = 1;
    return 0;
}

/*
 * Translates linear `va` for `access` (0 read, 1 write, 2 fetch) at privilege `user` (CPL 3).
 * Returns 0 with *pa and *perms (UC_PROT_* the TLB entry may grant), or a fault kind with *f.
 * Order of checks, as with EPT under the guest's paging: each paging-structure frame must be RAM
 * and resident before it is read; then the guest's permissions (#PF); then the final frame.
 * Accessed/Dirty bits are written only when the whole translation succeeds.
 */
static int walk(struct apf_vcpu *v, struct apf_regs *r, uint64_t va, int access, uint32_t user,
                int flags, uint64_t *pa, uint32_t *perms, struct apf_fault *f)
{
    const bool is_w = access == 1, is_x = access == 2;

    if ((uint64_t)(((int64_t)(va << 16)) >> 16) != va)
        return record(f, APF_FAULT_NONCANONICAL, va, access, user);

    if (!(r->cr0 & CR0_PG)) {
        uint64_t p = va;
        int k = check_frame(v, p & ~0xfffull, va, access, user, flags, 0, f);
        if (k)
            return k;
        *pa = p;
        *perms = UCX_PROT_READ | UCX_PROT_WRITE | UCX_PROT_EXEC;
        return 0;
    }

    uint64_t table = r->cr3 & PTE_ADDR;
    uint64_t ent_pa[4];
    int nent = 0;
    uint64_t rw = 1, us = 1, xd = 0, leaf = 0, p = 0;
    uint32_t rsvd = 0;

    for (int level = 4; level >= 1; level--) {
        uint64_t ep = table + (((va >> (12 + 9 * (level - 1))) & 511) << 3);
        int k = check_frame(v, ep, va, access, user, flags, level, f);
        if (k)
            return k;
        uint64_t e = rd64(v->ram + ep);
        if (!(e & PTE_P)) {
            record(f, APF_FAULT_GUEST_PF, va, access, user);
            f->error_code = (is_w ? PFEC_W : 0) | (user ? PFEC_U : 0);
            if (is_x && ((read_efer(v, r) & EFER_NXE) || (r->cr4 & CR4_SMEP)))
                f->error_code |= PFEC_ID;
            return APF_FAULT_GUEST_PF;
        }
        ent_pa[nent++] = ep;
        /* Address bits above MAXPHYADDR (40, what Unicorn's CPUID 0x80000008 reports), PS in a
         * PML4 entry, and the low address bits of a large page are reserved (SDM vol. 3, 4.5). */
        if ((e & RSVD_PHYS) || (level == 4 && (e & PTE_PS)) ||
            ((level == 3 || level == 2) && (e & PTE_PS) &&
             (e & (((level == 3 ? (1ull << 30) : (1ull << 21)) - 1) & ~0x1fffull)))) {
            record(f, APF_FAULT_GUEST_PF, va, access, user);
            f->error_code = PFEC_P | PFEC_RSVD | (is_w ? PFEC_W : 0) | (user ? PFEC_U : 0);
            if (is_x && ((read_efer(v, r) & EFER_NXE) || (r->cr4 & CR4_SMEP)))
                f->error_code |= PFEC_ID;
            return APF_FAULT_GUEST_PF;
        }
        rw &= (e >> 1) & 1;
        us &= (e >> 2) & 1;
        if (e & PTE_XD) {
            if (read_efer(v, r) & EFER_NXE)
                xd = 1;
            else
                rsvd = 1; /* XD is reserved without EFER.NXE */
        }
        if ((level == 3 || level == 2) && (e & PTE_PS)) {
            uint64_t m = level == 3 ? (1ull << 30) - 1 : (1ull << 21) - 1;
            p = ((e & PTE_ADDR) & ~m) | (va & m);
            leaf = e;
            break;
        }
        if (level == 1) {
            p = (e & PTE_ADDR) | (va & 0xfff);
            leaf = e;
            break;
        }
        table = e & PTE_ADDR;
    }

    /* permissions (SDM vol. 3, 4.6) */
    const uint64_t wp = r->cr0 & CR0_WP;
    const bool smap = !user && us && (r->cr4 & CR4_SMAP) && !(r->rflags & RFLAGS_AC);
    const bool can_r = user ? us : !smap;
    const bool can_w = user ? (us && rw) : (!smap && (rw || !wp));
    const bool can_x = !xd && (user ? us : !(us && (r->cr4 & CR4_SMEP)));
    const bool ok = rsvd ? false : is_x ? can_x : is_w ? can_w : can_r;
    if (!ok) {
        record(f, APF_FAULT_GUEST_PF, va, access, user);
        f->error_code = PFEC_P | (is_w ? PFEC_W : 0) | (user ? PFEC_U : 0) |
                        (rsvd ? PFEC_RSVD : 0);
        if (is_x && ((read_efer(v, r) & EFER_NXE) || (r->cr4 & CR4_SMEP)))
            f->error_code |= PFEC_ID;
        return APF_FAULT_GUEST_PF;
    }

    {
        int k = check_frame(v, p & ~0xfffull, va, access, user, flags, 0, f);
        if (k)
            return k;
    }

    if (flags & APF_TR_SET_AD) {
        for (int i = 0; i < nent - 1; i++)
            or64(v->ram + ent_pa[i], PTE_A);
        or64(v->ram + ent_pa[nent - 1], is_w ? (PTE_A | PTE_D) : PTE_A);
    }
    const bool dirty = is_w || (leaf & PTE_D);

    *pa = p;
    *perms = (can_r ? UCX_PROT_READ : 0) | ((can_w && dirty) ? UCX_PROT_WRITE : 0) |
             (can_x ? UCX_PROT_EXEC : 0);
    return 0;
}

/* ---- the TLB fill hook ----------------------------------------------------------------------- */
APF_API bool apf_fill_hook(void *uc, uint64_t vaddr, int type, struct ucx_tlb_entry *e, void *user)
{
    struct apf_vcpu *v = (struct apf_vcpu *)user;
    struct apf_regs r;
    uint64_t pa = 0;
    uint32_t perms = 0;
    int access = type == UCX_MEM_WRITE ? 1 : type == UCX_MEM_FETCH ? 2 : 0;
    (void)uc;

    v->n_fills++;
    read_regs(v, &r);
    v->asid = (r.cr0 & CR0_PG) ? ((r.cr3 & PTE_ADDR) | 1) : 0;
    if (walk(v, &r, vaddr, access, r.cpl == 3, APF_TR_SET_AD, &pa, &perms, &v->fault)) {
        v->n_denies++;
        v->stop_reason = APF_STOP_FAULT;
        return false;
    }
    e->paddr = pa & ~0xfffull;
    e->perms = perms;
    return true;
}

/* ---- API for Python ---------------------------------------------------------------------------- */
APF_API uint32_t apf_abi_version(void) { return APF_ABI_VERSION; }

/* Offsets of struct apf_vcpu fields, for accel.py to check its ctypes mirror. */
APF_API size_t apf_layout(uint64_t *out, size_t n)
{
    const uint64_t offs[] = {
        sizeof(struct apf_vcpu),
        offsetof(struct apf_vcpu, retired),
        offsetof(struct apf_vcpu, budget_end),
        offsetof(struct apf_vcpu, stop_reason),
        offsetof(struct apf_vcpu, cur_block_addr),
        offsetof(struct apf_vcpu, cur_block_asid),
        offsetof(struct apf_vcpu, asid),
        offsetof(struct apf_vcpu, fault),
        sizeof(struct apf_fault),
        offsetof(struct apf_vcpu, n_lookups),
        offsetof(struct apf_vcpu, ram),
        offsetof(struct apf_vcpu, uc),
        offsetof(struct apf_vcpu, miss),
        offsetof(struct apf_vcpu, tab),
        offsetof(struct apf_vcpu, tab_used),
        sizeof(struct apf_regs),
        offsetof(struct apf_vcpu, irq_window_end),
        offsetof(struct apf_vcpu, reg_write),
        offsetof(struct apf_vcpu, frame_access),
        offsetof(struct apf_vcpu, watch_hit),
    };
    size_t m = sizeof offs / sizeof offs[0];
    for (size_t i = 0; i < n && i < m; i++)
        out[i] = offs[i];
    return m;
}

APF_API struct apf_vcpu *apf_vcpu_new(void)
{
    struct apf_vcpu *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->abi = APF_ABI_VERSION;
    v->budget_end = UINT64_MAX;
    if (cache_alloc(v, 4096)) {
        free(v);
        return NULL;
    }
    return v;
}

APF_API void apf_vcpu_free(struct apf_vcpu *v)
{
    if (!v)
        return;
    free(v->tab);
    free(v);
}

/* Forget every cached block instruction count (e.g. after the guest rewrote code). */
APF_API void apf_cache_flush(struct apf_vcpu *v) { cache_alloc(v, v->tab_mask + 1); }

APF_API uint64_t apf_cache_size(const struct apf_vcpu *v) { return v->tab_used; }

/* Pre-seeds or overrides one entry (asid as in apf_vcpu.asid). */
APF_API void apf_cache_put(struct apf_vcpu *v, uint64_t addr, uint32_t size, uint64_t asid,
                   uint32_t icount)
{
    if (icount) {
        cache_put(v, addr, size, asid, icount);
        v->cur_block_asid = APF_ASID_NONE; /* break the memo */
    }
}

APF_API uint32_t apf_cache_get(const struct apf_vcpu *v, uint64_t addr, uint32_t size, uint64_t asid)
{
    return cache_get(v, addr, size, asid);
}

/* Reads CR0, CR3, CR4, EFER, RFLAGS and the CPL (CS.RPL) from the engine, for apf_translate. */
APF_API void apf_read_regs(struct apf_vcpu *v, struct apf_regs *r)
{
    uint64_t cs = 0;
    read_regs(v, r);
    read_efer(v, r);
    v->reg_read(v->uc, UCX_X86_REG_CR3, &r->cr3);
    v->reg_read(v->uc, UCX_X86_REG_CR4, &r->cr4);
    v->reg_read(v->uc, UCX_X86_REG_EFLAGS, &r->rflags);
    v->reg_read(v->uc, UCX_X86_REG_CS, &cs);
    r->cpl = (uint32_t)(cs & 3);
}

/*
 * The fill hook's walk for Python.  access: 0 read, 1 write, 2 fetch.  user: 1 = CPL 3 access,
 * 0 = supervisor, -1 = the engine's current CPL.  flags: APF_TR_SET_AD, APF_TR_NO_HOST.
 * regs: NULL = read them from the engine, else use these (have_efer = 0 reads EFER lazily).
 * Returns 0 and *paddr, or the fault kind with *fault filled in.  *perms may be NULL.
 */
APF_API int apf_translate(struct apf_vcpu *v, uint64_t vaddr, int access, int user, int flags,
                  const struct apf_regs *regs, uint64_t *paddr, uint32_t *perms,
                  struct apf_fault *fault)
{
    struct apf_regs r;
    struct apf_fault tmp;
    uint32_t pm = 0;
    uint64_t pa = 0;
    int k;
    if (regs)
        r = *regs;
    else
        read_regs(v, &r);
    if (user < 0)
        user = r.cpl == 3;
    if (!fault) {
        memset(&tmp, 0, sizeof tmp);
        fault = &tmp;
    }
    if (access < 0 || access > 2)
        access = 0;
    k = walk(v, &r, vaddr, access, (uint32_t)(user != 0), flags, &pa, &pm, fault);
    if (!k) {
        if (paddr)
            *paddr = pa;
        if (perms)
            *perms = pm;
    }
    return k;
}

/* TLB flush of one engine (UC_CTL_TLB_FLUSH). */
APF_API int apf_flush_tlb(struct apf_vcpu *v)
{
    return v->ctl(v->uc, UCX_CTL(UCX_CTL_TLB_FLUSH, 0, UCX_CTL_IO_WRITE));
}

/* Host page-out of frame gfn: mark it and flush every engine's TLB.  Returns 0, or -1 if gfn is
 * out of range, or the first uc_ctl error. */
APF_API int apf_page_out(struct apf_vcpu *const *vs, size_t n, uint64_t gfn)
{
    int err = 0;
    if (!n || gfn >= (vs[0]->ram_size >> 12))
        return -1;
    vs[0]->frame_state[gfn] = 1;
    for (size_t i = 0; i < n; i++) {
        int e = apf_flush_tlb(vs[i]);
        if (e && !err)
            err = e;
    }
    return err;
}

/* Host page-in: the frame is resident again (no flush needed: denials are never cached). */
APF_API int apf_page_in(struct apf_vcpu *const *vs, size_t n, uint64_t gfn)
{
    if (!n || gfn >= (vs[0]->ram_size >> 12))
        return -1;
    vs[0]->frame_state[gfn] = 0;
    return 0;
}

/* ---- the (empty) Python module, so setuptools builds and installs this file ------------------ */
static struct PyModuleDef apf_accel_module = {
    PyModuleDef_HEAD_INIT, "_accel",
    "C fast paths for apfdbg's Unicorn engines; loaded with ctypes by apfdbg.machine.accel.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__accel(void) { return PyModule_Create(&apf_accel_module); }
