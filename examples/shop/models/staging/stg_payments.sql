-- The loader re-sends some payments; keep the latest copy of each payment_id.
with source as (

    select * from {{ source('raw', 'payments') }}

),

deduplicated as (

    select *
    from source
    qualify row_number() over (partition by payment_id order by _loaded_at desc) = 1

),

renamed as (

    select
        payment_id,
        order_id,
        invoice_id,
        case when order_id is not null then 'order' else 'invoice' end as payment_type,
        payment_method,
        status as payment_status,
        {{ cents_to_dollars('amount_cents') }} as amount,
        created_at,
        _loaded_at

    from deduplicated

)

select * from renamed
